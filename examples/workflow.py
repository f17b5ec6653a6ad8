"""The Bayesian workflow on a real model with real data, end to end: compile, train,
infer, check the model against the data (posterior predictive), check the inference
(simulation-based calibration), hand the draws to ArviZ.

The model is specs/pima.ppl: a logistic regression of diabetes on plasma glucose, body
mass index and age for 200 Pima women (R's MASS::Pima.tr), written with a matrix
product and logits.

    python examples/workflow.py [figures folder]      (about 2 minutes on 2 cores)
"""
import sys
import time
import warnings
from pathlib import Path

import csis_dsl

here = Path(__file__).resolve().parent
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("workflow_figures")
out.mkdir(parents=True, exist_ok=True)
data = here.parent / "specs" / "pima.json"

# 1. compile: the spec plus its data file (args N and X, observation `diabetic`)
model = csis_dsl.compile(here.parent / "specs" / "pima.ppl", data=data)
print(model)

# 2. train the proposal network on simulations of the model (inference compilation)
t = time.perf_counter()
model.train(num_steps=400, batch_size=512, seed=0, progress=False, keep_best=True)
model.history.plot(out / "training.png")
print(f"trained {len(model.history.steps)} steps in {time.perf_counter() - t:.0f} s; "
      f"validation ESS/N {model.history.val_ess[-1]:.2f}")

# 3. infer for the real observations; refine the proposal for them when the amortised
#    one is not good enough (the weights stay exact either way)
observations = csis_dsl.read_data(data, part="observations")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    post = model.infer(observations, num_samples=5000, seed=1)
print(f"amortised: ESS {post.ess:.0f} of {post.num_samples}")
if post.ess < 0.2 * post.num_samples:
    post = model.infer(observations, num_samples=5000, seed=1, refine_steps=150)
    print(f"refined:   ESS {post.ess:.0f} of {post.num_samples}")
print(post.summary())
post.plot(out / "posterior.png")

# 4. posterior predictive check: does the model reproduce the data?
replicates = post.predictive(2000, seed=2)
share = replicates["diabetic"].float().mean(1)
print(f"posterior predictive: share diabetic {share.mean():.3f} "
      f"(90% {share.quantile(0.05):.3f}-{share.quantile(0.95):.3f}); observed "
      f"{post.observations['diabetic'].float().mean():.3f}")
post.plot_predictive(out / "predictive.png", seed=2)

# 5. simulation-based calibration: is the inference itself right, on data sets drawn
#    from the model, for the weighted posterior and the plain proposal?
t = time.perf_counter()
cal = model.calibrate(num_datasets=200, num_samples=1000, seed=3)
print(cal.summary())
print(f"({time.perf_counter() - t:.0f} s)")
cal.plot(out / "calibration.png")

# 6. ArviZ: the draws, the observed data, the raw weights and their diagnostics
try:
    from arviz_stats import summary
except ImportError:
    print("ArviZ is not installed: pip install 'csis_dsl[arviz]'")
else:
    tree = post.to_arviz(seed=4)
    print(summary(tree, kind="stats"))
    print({k: tree.attrs[k] for k in ("ess", "pareto_k", "log_evidence")})
print(f"figures in {out}/")
