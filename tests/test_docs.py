"""Every code block of the README and the language reference runs, so the documentation
cannot drift from the code: ``ppl`` blocks compile, a ``ppl-error`` block fails with
exactly the diagnostics of the ``text`` block after it, ``python`` blocks are executed
and ``sh`` blocks run in a shell (in a scratch copy of specs/ and examples/)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

import csis_dsl
from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "docs" / "LANGUAGE_REFERENCE.md"]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\n", re.S | re.M)


def blocks():
    out = []
    for doc in DOCS:
        found = list(FENCE.finditer(doc.read_text()))
        for k, m in enumerate(found):
            lang, body = m.group(1), m.group(2)
            line = doc.read_text()[:m.start()].count("\n") + 1
            nxt = found[k + 1] if k + 1 < len(found) else None
            out.append(pytest.param(lang, body, nxt.group(2) if nxt else None,
                                    id=f"{doc.name}:{line}:{lang or 'plain'}"))
    return out


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    for d in ("specs", "examples"):
        shutil.copytree(ROOT / d, tmp_path / d)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("lang,body,following", blocks())
def test_code_block(lang, body, following, scratch):
    if lang == "ppl":
        csis_dsl.compile_string(body, name="block.ppl")
    elif lang == "ppl-error":
        with pytest.raises(csis_dsl.CompileError) as ei:
            csis_dsl.compile_string(body, name="bad.ppl")
        assert ei.value.format().strip() == following.strip()
    elif lang == "python":
        exec(compile(body, "<doc block>", "exec"), {"__name__": "__doc_block__"})
    elif lang == "sh":
        if "graph" in body and re.search(r"\.(svg|png)\b", body) and not shutil.which("dot"):
            pytest.skip("graphviz 'dot' not installed")
        env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
                   PYTHONPATH=str(ROOT))
        lines = [ln for ln in body.splitlines() if not ln.startswith("make ")]
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], env=env,
                           capture_output=True, text=True, cwd=scratch, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
    elif lang == "text":
        pass      # the expected output of the block before it (checked there)
    else:
        pytest.fail(f"code block without a checked language tag: {lang!r}; use ppl, "
                    "ppl-error, python, sh or text")


def test_quick_start_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    quick = re.search(r"## Quick start.*?```sh\n(.*?)```", readme, re.S).group(1)
    cmds = [ln.split("#")[0].strip() for ln in quick.splitlines() if ln.strip()]
    assert cmds == ["make run", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci.splitlines()[-1]
    mk = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: ", mk, re.M) and re.search(r"^test: ", mk, re.M)


def test_reference_lists_every_distribution_and_function():
    from csis_dsl.catalogue.distributions import DISTRIBUTIONS, NAMES
    from csis_dsl.catalogue.functions import FUNCTIONS
    ref = (ROOT / "docs" / "LANGUAGE_REFERENCE.md").read_text()
    for name in NAMES:
        assert f"`{name}(" in ref, name
    for d in DISTRIBUTIONS.values():           # other parameterisations, by keyword
        if d.variant and d.name != "Mixture":
            assert f"{d.name}(" in ref and f"{d.variant}=" in ref, d.key
    for name in FUNCTIONS:
        assert re.search(rf"\b{name}\(", ref), name
