"""Language-model specs on the command line, without the ``llm`` extra's models: bad specs and a
missing extra are refused in one line with exit code 2 before any episode runs (a missing model
file and the tests that run models are in ``test_llm.py``, marked ``llm``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from peerpreserve.experiments.cli import main

CONFIG = "configs/quickstart.yaml"


def evaluate(policy: str, out: Path) -> int:
    return main(["evaluate", "--config", CONFIG, "--policy", policy, "--episodes", "1",
                 "--out", str(out)])  # fmt: skip


@pytest.mark.parametrize("module", ["transformers", "openai"])
def test_without_the_extra_an_llm_policy_names_the_extra(
    module: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules is Python's own "this module cannot be imported".
    monkeypatch.setitem(sys.modules, module, None)
    assert evaluate("llm:smollm2", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    # Where the extra is not installed at all (make test in CI), every module of it is named.
    missing = re.search(r'needs the llm extra \((.+) missing\): pip install -e "\.\[llm\]"$', err)
    assert missing is not None, err
    assert module in missing.group(1).split(", ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("llm:gpt5", "unknown language-model backend; allowed: llm:smollm2, llm:gguf:<path>"),
        ("llm:smollm2?temperature=hot", "temperature='hot' is not a number"),
        ("llm:smollm2?colour=red", "setting 'colour=red' unknown; allowed: "),
        ("llm:openai:gpt-4o-mini", "expected llm:openai:<model>@<base_url>"),
    ],
)
def test_bad_specs_exit_2_with_one_line(policy: str, message: str, tmp_path: Path, capsys) -> None:
    assert evaluate(policy, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert not (tmp_path / "out").exists()
