"""The ``csis-dsl`` command line. Exit codes: 0 ok, 1 model or input error, 2 usage."""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from .errors import CsisDslError

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2
_FMT = argparse.RawDescriptionHelpFormatter
_EXAMPLES = {
    "main": """examples:
  csis-dsl check specs/gaussian.ppl
  csis-dsl graph specs/mixture.ppl -o mixture.svg
  csis-dsl train specs/gaussian.ppl --steps 2000 -o gaussian.pt
  csis-dsl infer gaussian.pt --obs x1=8 --obs x2=9 --plot posterior.png
  csis-dsl run specs/gaussian.ppl --obs x1=8 --obs x2=9

'csis-dsl COMMAND --help' explains each command.""",
    "check": """examples:
  csis-dsl check specs/mixture.ppl
  csis-dsl check specs/mixture.ppl --arg N=50 --arg K=4
  csis-dsl check specs/gaussian.ppl --dump graph""",
    "graph": """examples:
  csis-dsl graph specs/counting.ppl -o counting.svg
  csis-dsl graph specs/counting.ppl -o counting.dot    (no graphviz needed)

svg and png need the graphviz 'dot' program (apt-get install graphviz).""",
    "train": """examples:
  csis-dsl train specs/gaussian.ppl -o gaussian.pt
  csis-dsl train specs/mixture.ppl --steps 3000 --batch-size 128 --arch lstm -o mix.pt
  csis-dsl train specs/gaussian.ppl --nproc 2 -o gaussian.pt       (2 processes, gloo)
  csis-dsl train specs/gaussian.ppl --device cuda -o gaussian.pt
  csis-dsl simulate specs/gaussian.ppl -n 1000000 -o sims/
  csis-dsl train specs/gaussian.ppl --dataset sims/ --epochs 3 -o gaussian.pt
  torchrun --nnodes 2 --nproc-per-node 4 ... -m csis_dsl.cli train spec.ppl -o m.pt""",
    "simulate": """examples:
  csis-dsl simulate specs/gaussian.ppl -n 1000000 -o sims/
  csis-dsl simulate specs/pima.ppl --data specs/pima.json -n 200000 --shard-size 50000 -o pima-sims/

Writes shards of joint traces (safetensors) and an index; train from them with
'csis-dsl train SPEC --dataset DIR --epochs E'.""",
    "infer": """examples:
  csis-dsl infer gaussian.pt --obs x1=8 --obs x2=9
  csis-dsl infer lr.pt --obs 'y=[0.1, 0.5, 0.9]' --samples 5000 --json
  csis-dsl infer gaussian.pt --obs-file obs.json --plot posterior.png
  csis-dsl infer gaussian.pt --obs x1=30 --obs x2=31 --refine-steps 200
  csis-dsl infer gaussian.pt --obs x1=8 --obs x2=9 --ppc ppc.png --netcdf post.nc

--obs values are JSON: numbers, true/false, or lists for arrays.""",
    "calibrate": """examples:
  csis-dsl calibrate gaussian.pt
  csis-dsl calibrate lr.pt --datasets 300 --samples 2000 --plot sbc.png --json

Simulates data sets from the model's prior, infers each with the trained proposal and
ranks the true latents among posterior draws (simulation-based calibration). Exit code
0 whatever the verdict; read it from the output.""",
    "run": """examples:
  csis-dsl run specs/gaussian.ppl --obs x1=8 --obs x2=9
  csis-dsl run specs/outlier.ppl --obs y=12 --steps 800 --plot outlier.png""",
}


def _kv(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        val = json.loads(v)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{k}: {v!r} is not a number, true/false or a "
                                         "JSON list") from None
    return k.strip(), val


def _named(pairs, flag):
    """The NAME=VALUE pairs of a repeatable flag as a dict; a name given twice is an
    error (which value was meant?), not a silent choice of the last."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _InputError(f"{flag} gives '{k}' twice ({json.dumps(out[k])} and "
                              f"{json.dumps(v)}); give each name once")
        out[k] = v
    return out


def _number(kind, low, inclusive):
    """An argparse type: a finite number of ``kind`` at least (or above) ``low``."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if v != v or v in (float("inf"), float("-inf")) or v < low or (v == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'above'} "
                                             f"{low}, got {text}")
        return v
    return parse


POSITIVE_INT, COUNT, POSITIVE = _number(int, 1, True), _number(int, 0, True), _number(float, 0, False)


def _share(text):
    """An argparse type: "auto" or a number in [0, 1]."""
    if text == "auto":
        return text
    v = _number(float, 0, True)(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f'must be "auto" or a number in [0, 1], got {text}')
    return v


def _parser():
    p = argparse.ArgumentParser(
        prog="csis-dsl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile .ppl models, train their proposal networks (inference "
                    "compilation) and infer posteriors. Exit codes: 0 ok, 1 model or "
                    "input error, 2 usage error.",
        epilog=_EXAMPLES["main"])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="compile a spec; print a summary or every error",
                       epilog=_EXAMPLES["check"], formatter_class=_FMT, description="Compile FILE and print its args, latents (with "
                                   "supports) and observed variables, or every diagnostic.")
    _spec_args(c)
    c.add_argument("--dump", choices=["ast", "checked", "graph", "dot", "pyro"],
                   help="print one compiler phase")
    g = sub.add_parser("graph", help="draw the dependency graph",
                       epilog=_EXAMPLES["graph"], formatter_class=_FMT, description="Draw the dependency graph of FILE: latents as ellipses, "
                                   "observed filled, deterministic as boxes, args as rounded "
                                   "boxes, loops as clusters, control edges dashed.")
    _spec_args(g)
    g.add_argument("-o", "--output", required=True, help="out.svg, out.png or out.dot")
    t = sub.add_parser("train", help="train the proposal network and save a checkpoint",
                       epilog=_EXAMPLES["train"], formatter_class=_FMT,
                       description="Train FILE's proposal network on fresh simulations of "
                                   "the model (a progress bar shows the loss and traces/s); "
                                   "Ctrl-C stops cleanly and still saves what was trained.")
    _train_args(t)
    t.add_argument("-o", "--output", required=True, help="checkpoint path (model.pt)")
    t.add_argument("--nproc", type=POSITIVE_INT, default=1,
                   help="train data-parallel in N processes on this machine "
                        "(torch.distributed; default 1)")
    t.add_argument("--dataset", metavar="DIR", default=None,
                   help="train from an offline dataset written by 'csis-dsl simulate' "
                        "instead of fresh simulations")
    t.add_argument("--epochs", type=POSITIVE_INT, default=1,
                   help="passes over --dataset (default 1)")
    s_ = sub.add_parser("simulate", help="write an offline dataset of joint traces",
                        epilog=_EXAMPLES["simulate"], formatter_class=_FMT,
                        description="Simulate joint traces of FILE's model and write them "
                                    "to DIR as safetensors shards, for training offline.")
    _spec_args(s_)
    s_.add_argument("-n", "--traces", type=POSITIVE_INT, required=True,
                    help="how many traces")
    s_.add_argument("--shard-size", type=POSITIVE_INT, default=100_000,
                    help="traces per shard (default 100000)")
    s_.add_argument("--seed", type=COUNT, default=0, help="random seed (default 0)")
    s_.add_argument("-o", "--output", required=True, help="the dataset folder")
    s_.add_argument("--device", default=None, help="simulate on this device (cpu, cuda)")
    s_.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = sub.add_parser("infer", help="posterior for observations from a checkpoint",
                       epilog=_EXAMPLES["infer"], formatter_class=_FMT,
                       description="Importance sampling with the proposal network of a "
                                   "trained checkpoint: prints mean, std and 5/50/95%% "
                                   "quantiles per latent (probabilities for discrete ones), "
                                   "the effective sample size, the Pareto k-hat of the "
                                   "weights and the log evidence.")
    i.add_argument("checkpoint")
    _infer_args(i)
    i.add_argument("--no-progress", action="store_true", help="no progress bar")
    i.add_argument("--device", default=None, help="run on this device (cpu, cuda, cuda:N)")
    k = sub.add_parser("calibrate", help="simulation-based calibration of a checkpoint",
                       epilog=_EXAMPLES["calibrate"], formatter_class=_FMT,
                       description="Simulation-based calibration (Talts et al. 2018) of the "
                                   "weighted posterior and of the plain proposal: rank "
                                   "statistics, a uniformity test per latent element and "
                                   "the expected coverage.")
    k.add_argument("checkpoint")
    k.add_argument("--datasets", type=POSITIVE_INT, default=200,
                   help="simulated data sets (default 200)")
    k.add_argument("--samples", type=POSITIVE_INT, default=1000,
                   help="importance samples per data set (default 1000)")
    k.add_argument("--ranks", type=POSITIVE_INT, default=100,
                   help="posterior draws each true value is ranked among (default 100)")
    k.add_argument("--seed", type=COUNT, default=0, help="random seed (default 0)")
    k.add_argument("--plot", help="save the rank ECDF plot to this PNG")
    k.add_argument("--json", action="store_true", help="print JSON instead of a table")
    k.add_argument("--device", default=None, help="run on this device (cpu, cuda, cuda:N)")
    r = sub.add_parser("run", help="compile, train with defaults, infer, print the summary",
                       epilog=_EXAMPLES["run"], formatter_class=_FMT,
                       description="The whole job: compile FILE, check the observations, "
                                   "train the proposal network, infer and summarise.")
    _train_args(r)
    _infer_args(r)
    return p


def _spec_args(p):
    """A spec file and its arg values (repeatable --arg, or a --data file)."""
    p.add_argument("file", help="a .ppl spec")
    p.add_argument("--arg", action="append", type=_kv, default=[], metavar="NAME=VALUE",
                   help="override an arg (repeatable)")
    p.add_argument("--data", metavar="FILE", default=None,
                   help="arg values from a JSON or CSV file (--arg overrides)")


def _train_args(t):
    _spec_args(t)
    t.add_argument("--steps", type=POSITIVE_INT, default=None,
                   help="training steps (default 1500; not with --dataset)")
    t.add_argument("--batch-size", type=POSITIVE_INT, default=512,
                   help="traces per step (default 512)")
    t.add_argument("--lr", type=POSITIVE, default=1e-2,
                   help="Adam's initial learning rate (default 1e-2)")
    t.add_argument("--lr-tau", type=_number(float, 0, True), default=50,
                   help="the rate at step t is lr / sqrt(1 + t / lr-tau); 0 keeps it "
                        "constant (default 50)")
    t.add_argument("--lr-decay", type=POSITIVE, default=None,
                   help="also decay the rate within this run to this fraction of its "
                        "start (default: no extra decay)")
    t.add_argument("--arch", choices=["lstm", "feedforward"], default="lstm",
                   help="proposal network: an LSTM over the latent sites (default) or the "
                        "cheaper feedforward (mean-field) variant")
    t.add_argument("--plate-subsample", type=COUNT, default=64, metavar="M",
                   help="estimate the loss of a site with more than M instances from M of "
                        "them drawn at random per step (unbiased; 0: all; default 64)")
    t.add_argument("--seed", type=COUNT, default=0, help="random seed (default 0)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--device", default=None,
                   help="train on this device (cpu, cuda, cuda:N; default cpu)")


def _infer_args(i):
    i.add_argument("--obs", action="append", type=_kv, default=[], metavar="NAME=VALUE",
                   help="an observation (repeatable); VALUE is a number or JSON list")
    i.add_argument("--obs-file", help="a JSON or CSV file of observations")
    i.add_argument("--samples", type=POSITIVE_INT, default=1000,
                   help="importance samples (default 1000)")
    i.add_argument("--refine-steps", type=COUNT, default=None, metavar="N",
                   help="first adapt a copy of the proposal to these observations with N "
                        "importance-weighted updates (infer: default 0; run: automatic "
                        "when the amortised ESS is below 10%% of the samples)")
    i.add_argument("--program", type=_share, default="auto", metavar="SHARE",
                   help="the share of the draws from the program's own proposal (priors and "
                        "informed locations, no network) instead of the trained network: "
                        "a number in [0, 1], or auto (default: set by a pilot of 256 draws; "
                        "the summary line says what was used)")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.add_argument("--plot", help="save posterior marginals to this PNG")
    i.add_argument("--ppc", metavar="FILE.png",
                   help="save a posterior predictive check (observed data over replicates)")
    i.add_argument("--netcdf", metavar="FILE.nc",
                   help="write the posterior as an ArviZ DataTree (needs csis_dsl[arviz])")
    i.add_argument("--infer-seed", type=COUNT, default=None,
                   help="random seed for the importance sampler")


def _observations(a):
    from .data import read_data
    obs = {}
    if a.obs_file:
        obs.update(read_data(a.obs_file, "observations file", part="observations"))
    obs.update(_named(a.obs, "--obs"))
    if not obs:
        raise _InputError("no observations: give --obs NAME=VALUE or --obs-file FILE")
    return obs


class _InputError(CsisDslError):
    """Bad command-line input (an unreadable observation file, none given)."""


def _summary(m):
    lines = [f"model {m.name} ({m.file}): OK"]
    ch = m.checked
    for n, v in m.args.items():
        lines.append(f"  arg       {n} = {v}")
    for n in m.latents:
        v = ch.vars[n]
        lines.append(f"  latent    {n}: {v.type} ~ {v.dist}, support {v.support}")
    for n in m.observed:
        v = ch.vars[n]
        lines.append(f"  observed  {n}: {v.type} (shape {list(v.type.shape)})")
    return "\n".join(lines)


def _train(a, m=None):
    import csis_dsl
    m = m or csis_dsl.compile(a.file, args=_named(a.arg, "--arg") or None, data=a.data)
    if a.device:
        m.to(a.device)
    m.configure(architecture=a.arch)
    dataset = getattr(a, "dataset", None)
    if dataset is not None and a.steps is not None:
        raise _InputError("give --steps (fresh simulations) or --dataset with --epochs, "
                          "not both")
    steps = None if dataset is not None else (a.steps or 1500)
    m.train(num_steps=steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
            lr_decay=a.lr_decay, lr_tau=a.lr_tau or None, progress=not a.no_progress,
            dataset=dataset, epochs=getattr(a, "epochs", 1),
            plate_subsample=a.plate_subsample or None)
    if m.history.interrupted:
        print(f"interrupted after {len(m.history.steps)} steps; saving what was trained",
              file=sys.stderr)
    return m


AUTO_REFINE_STEPS, AUTO_REFINE_BELOW = 300, 0.1


def _infer(m, a, auto_refine=False):
    obs = _observations(a)
    show = not getattr(a, "no_progress", False)
    steps = a.refine_steps or 0
    if auto_refine and a.refine_steps is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            first = m.infer(obs, num_samples=a.samples, seed=a.infer_seed,
                            program=a.program)
        if first.ess < AUTO_REFINE_BELOW * first.num_samples:
            print(f"amortised ESS {first.ess:.1f} of {first.num_samples} is below "
                  f"{AUTO_REFINE_BELOW:.0%}: refining the proposal for these observations "
                  f"({AUTO_REFINE_STEPS} steps)", file=sys.stderr)
            steps = AUTO_REFINE_STEPS
    post = m.infer(obs, num_samples=a.samples, seed=a.infer_seed, refine_steps=steps,
                   progress=show, program=a.program)
    if a.json:
        print(json.dumps(post.to_dict(), indent=2))
    else:
        print(post.summary())
    if a.plot:
        post.plot(a.plot)
    if a.ppc:
        post.plot_predictive(a.ppc, seed=a.infer_seed)
    if a.netcdf:
        from .engine.interop import write_netcdf
        write_netcdf(post, a.netcdf, seed=a.infer_seed)
    return post


def _check_outputs(a):
    """Fail before the work, not after it, on an output that cannot be written."""
    from .files import check_writable
    for what, path in (("the figure", getattr(a, "plot", None)),
                       ("the predictive check", getattr(a, "ppc", None)),
                       ("the netCDF file", getattr(a, "netcdf", None))):
        if path:
            check_writable(path, what)
    if getattr(a, "netcdf", None):
        from .engine.interop import _arviz
        _arviz()


def _save(m, a):
    """Rank 0 (or the only process) writes the checkpoint."""
    from .engine.distributed import from_environment
    group = from_environment()
    if group is None or group.lead:
        m.save(a.output)
        print(f"saved {a.output} ({m.history.traces} traces)")


def _train_parallel(a, argv):
    """``--nproc N``: check the spec here (its errors are shown once, before any process
    starts), then run this same command in N processes of one torch.distributed job."""
    import csis_dsl
    from .engine.distributed import spawn
    m = csis_dsl.compile(a.file, args=_named(a.arg, "--arg") or None, data=a.data)
    if a.device:
        m.to(a.device)
    if a.dataset is not None:
        from .engine.dataset import Dataset
        Dataset(a.dataset, m).steps_per_epoch(a.batch_size, a.nproc)
    spawn(a.nproc, _train_worker, list(argv))


def _train_worker(argv):
    a = _parser().parse_args(argv)
    _save(_train(a), a)


def main(argv=None):
    p = _parser()
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    warnings.simplefilter("default")
    try:
        import csis_dsl
        if a.cmd == "check":
            m = csis_dsl.compile(a.file, args=_named(a.arg, "--arg") or None, data=a.data)
            print(m.dump(a.dump) if a.dump else _summary(m))
        elif a.cmd == "graph":
            from .render import render_graph
            m = csis_dsl.compile(a.file, args=_named(a.arg, "--arg") or None, data=a.data)
            render_graph(m, a.output)
            print(f"wrote {a.output}")
        elif a.cmd == "train":
            from .files import check_writable
            check_writable(a.output, "the checkpoint")      # before, not after, training
            if a.nproc > 1:
                _train_parallel(a, argv if argv is not None else sys.argv[1:])
            else:
                m = _train(a)
                _save(m, a)
        elif a.cmd == "simulate":
            m = csis_dsl.compile(a.file, args=_named(a.arg, "--arg") or None, data=a.data)
            if a.device:
                m.to(a.device)
            m.simulate_to(a.output, a.traces, shard_size=a.shard_size, seed=a.seed,
                          progress=not a.no_progress)
            print(f"wrote {a.traces} traces of model {m.name} to {a.output}")
        elif a.cmd == "infer":
            _check_outputs(a)
            m = csis_dsl.load(a.checkpoint, device=a.device)
            _infer(m, a)
        elif a.cmd == "calibrate":
            _check_outputs(a)
            m = csis_dsl.load(a.checkpoint, device=a.device)
            cal = m.calibrate(num_datasets=a.datasets, num_samples=a.samples,
                              num_ranks=a.ranks, seed=a.seed)
            print(json.dumps(cal.to_dict(), indent=2) if a.json else cal.summary())
            if a.plot:
                cal.plot(a.plot)
        elif a.cmd == "run":
            obs = _observations(a)
            _check_outputs(a)
            m = csis_dsl.compile(a.file, args=_named(a.arg, "--arg") or None, data=a.data)
            m.check_observations(obs)       # fail before training, not after
            m = _train(a, m)
            a.obs, a.obs_file = list(obs.items()), None
            _infer(m, a, auto_refine=True)
        return EXIT_OK
    except CsisDslError as err:
        print(err.format(), file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
