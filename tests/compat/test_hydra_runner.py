"""compat.core.config.hydra_runner: NeMo's script decorator on Hydra 1.3, run as real scripts in subprocesses.

Each test writes a YAML config and a script importing ``compat.core.config.hydra_runner`` into ``tmp_path`` and runs
it with ``sys.executable`` from a separate working directory, so "relative to the script" and "the cwd is left
alone" are both observable. The script prints one ``TASK {json}`` line per job and ``RETURN {json}`` at the end.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
name: demo
model:
  optim:
    lr: 0.1
    betas: [0.9, 0.98]
  drop_me: 1
  double_lr: ${multiply:${model.optim.lr},2}
  total: ${sum:${model.optim.lr},1}
  gpu: ${gpu_name:}
trainer:
  devices: 1
"""

SCRIPT = """\
import json, os
from omegaconf import OmegaConf
from compat.core.config import hydra_runner

@hydra_runner(config_path="../conf", config_name="config")
def main(cfg):
    print("TASK " + json.dumps({"cfg": OmegaConf.to_container(cfg, resolve=True), "cwd": os.getcwd()}), flush=True)
    if cfg.get("fail", False):
        raise RuntimeError("task failed on purpose")
    return {"lr": cfg.model.optim.lr}

if __name__ == "__main__":
    print("RETURN " + json.dumps(main()), flush=True)
"""

SCHEMA_SCRIPT = """\
import dataclasses, json, os
from typing import List, Optional
from omegaconf import OmegaConf
from compat.core.config import hydra_runner

@dataclasses.dataclass
class Optim:
    lr: float = 1.0
    betas: List[float] = dataclasses.field(default_factory=lambda: [0.5, 0.5])
    weight_decay: float = 0.001

@dataclasses.dataclass
class Model:
    optim: Optim = dataclasses.field(default_factory=Optim)
    drop_me: int = 0
    double_lr: float = 0.0
    total: float = 0.0
    gpu: Optional[str] = None

@dataclasses.dataclass
class Trainer:
    devices: int = 1

@dataclasses.dataclass
class Cfg:
    name: str = "schema"
    model: Model = dataclasses.field(default_factory=Model)
    trainer: Trainer = dataclasses.field(default_factory=Trainer)

@hydra_runner(config_path="../conf", config_name="config", schema=Cfg)
def main(cfg):
    print("TASK " + json.dumps({"cfg": OmegaConf.to_container(cfg, resolve=True), "cwd": os.getcwd()}), flush=True)

if __name__ == "__main__":
    main()
"""

FAKE_PYNVML_ABSENT = 'raise ImportError("No module named \'pynvml\' (test stand-in)")\n'

FAKE_PYNVML_H100 = """\
class NVMLError(Exception):
    pass

def nvmlInit():
    pass

def nvmlShutdown():
    pass

def nvmlDeviceGetHandleByIndex(index):
    return index

def nvmlDeviceGetCudaComputeCapability(handle):
    return (9, 0)
"""


@pytest.fixture
def project(tmp_path: Path) -> types.SimpleNamespace:
    """``proj/conf/*.yaml``, ``proj/scripts/{train,train_schema}.py``, an empty working dir and pynvml stand-ins."""
    conf = tmp_path / "proj" / "conf"
    conf.mkdir(parents=True)
    (conf / "config.yaml").write_text(CONFIG)
    (conf / "other.yaml").write_text("name: other\nmodel:\n  optim:\n    lr: 3\n")
    (conf / "with_hydra.yaml").write_text(
        "name: yaml_hydra\nmodel:\n  optim:\n    lr: 4\nhydra:\n  run:\n    dir: yaml_out\n  output_subdir: .yh\n"
    )
    (conf / "typo.yaml").write_text("model:\n  optim:\n    lrr: 0.3\n")
    scripts = tmp_path / "proj" / "scripts"
    scripts.mkdir()
    (scripts / "train.py").write_text(SCRIPT)
    (scripts / "train_schema.py").write_text(SCHEMA_SCRIPT)
    alt = tmp_path / "alt_conf"
    alt.mkdir()
    (alt / "alt.yaml").write_text("name: alt\nmodel:\n  optim:\n    lr: 5\n")
    extra = tmp_path / "extra_conf"
    extra.mkdir()
    (extra / "extra.yaml").write_text("name: extra\nmodel:\n  optim:\n    lr: 6\n")
    for name, text in (("nvml_absent", FAKE_PYNVML_ABSENT), ("nvml_h100", FAKE_PYNVML_H100)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pynvml.py").write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    return types.SimpleNamespace(
        root=tmp_path, work=work, script=scripts / "train.py", schema_script=scripts / "train_schema.py"
    )


def _run(project: types.SimpleNamespace, *args: str, script: Path | None = None, nvml: str = "nvml_absent"):
    """Runs a script of ``project`` from its working dir; ``nvml`` picks the ``pynvml`` stand-in on the path."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(project.root / nvml), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(script or project.script), *args],
        cwd=project.work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tasks(stdout: str) -> list[dict]:
    return [json.loads(line[len("TASK ") :]) for line in stdout.splitlines() if line.startswith("TASK ")]


def _returned(stdout: str):
    lines = [line for line in stdout.splitlines() if line.startswith("RETURN ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][len("RETURN ") :])


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


# ----------------------------------------------------------------------------------------------------------------
# Single runs


def test_overrides_of_every_kind_cwd_unchanged_no_litter(project):
    before = _tree(project.root)
    result = _ok(
        _run(project, "model.optim.lr=0.5", "+model.new_key=3", "++name=renamed", "++trainer.accel=cpu",
             "~model.drop_me", "model.optim.betas=[0.8,0.5]")
    )  # fmt: skip
    (task,) = _tasks(result.stdout)
    cfg = task["cfg"]
    assert cfg["model"]["optim"] == {"lr": 0.5, "betas": [0.8, 0.5]}
    assert cfg["model"]["new_key"] == 3
    assert cfg["name"] == "renamed"
    assert cfg["trainer"] == {"devices": 1, "accel": "cpu"}
    assert "drop_me" not in cfg["model"]
    assert task["cwd"] == str(project.work)
    assert _returned(result.stdout) == {"lr": 0.5}  # a single run returns the task's value
    assert _tree(project.root) == before  # no .hydra/, outputs/, multirun/, train.log anywhere
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr


def test_resolvers_without_and_with_pynvml(project):
    cfg = _tasks(_ok(_run(project, "model.optim.lr=3")).stdout)[0]["cfg"]
    assert (cfg["model"]["double_lr"], cfg["model"]["total"], cfg["model"]["gpu"]) == (6, 4, None)
    cfg = _tasks(_ok(_run(project, nvml="nvml_h100")).stdout)[0]["cfg"]
    assert cfg["model"]["gpu"] == "h100"


def test_config_name_path_and_dir_flags(project):
    assert _tasks(_ok(_run(project, "--config-name", "other")).stdout)[0]["cfg"]["name"] == "other"
    assert _tasks(_ok(_run(project, "-cn", "other", "model.optim.lr=9")).stdout)[0]["cfg"]["model"]["optim"] == {
        "lr": 9
    }
    alt = str(project.root / "alt_conf")
    assert _tasks(_ok(_run(project, "--config-path", alt, "--config-name", "alt")).stdout)[0]["cfg"]["name"] == "alt"
    assert _tasks(_ok(_run(project, "-cp", alt, "-cn=alt")).stdout)[0]["cfg"]["model"]["optim"]["lr"] == 5
    extra = str(project.root / "extra_conf")
    assert _tasks(_ok(_run(project, "--config-dir", extra, "-cn", "extra")).stdout)[0]["cfg"]["name"] == "extra"


def test_hydra_outputs_only_on_request(project):
    before = _tree(project.work)
    result = _ok(_run(project, "hydra.run.dir=out", "hydra.output_subdir=.hydra", "hydra/job_logging=default"))
    assert _tasks(result.stdout)[0]["cwd"] == str(project.work)  # run.dir is not a chdir (version_base 1.3)
    assert _tree(project.work) - before == {
        "out", "out/.hydra", "out/.hydra/config.yaml", "out/.hydra/hydra.yaml", "out/.hydra/overrides.yaml",
        "out/train.log",
    }  # fmt: skip
    # A `hydra:` section in the YAML beats the defaults too (NeMo's appended overrides would beat it).
    _ok(_run(project, "-cn", "with_hydra"))
    assert (project.work / "yaml_out" / ".yh" / "config.yaml").is_file()


def test_cfg_job_prints_without_running(project):
    result = _ok(_run(project, "--cfg", "job", "model.optim.lr=7"))
    assert _tasks(result.stdout) == []
    printed = OmegaConf.create(result.stdout.split("RETURN ")[0])
    assert printed.model.optim.lr == 7
    assert OmegaConf.to_container(printed.model, resolve=False)["double_lr"] == "${multiply:${model.optim.lr},2}"
    assert "hydra" not in printed
    assert _returned(result.stdout) is None
    resolved = _ok(_run(project, "--cfg", "job", "--resolve", "model.optim.lr=7"))
    assert OmegaConf.create(resolved.stdout.split("RETURN ")[0]).model.double_lr == 14


def test_help_and_info(project):
    result = _ok(_run(project, "--help"))
    assert "train is powered by Hydra." in result.stdout
    assert "double_lr: ${multiply:${model.optim.lr},2}" in result.stdout  # the config is shown
    assert _tasks(result.stdout) == [] and "RETURN" not in result.stdout  # --help exits 0 without running
    info = _ok(_run(project, "--info", "searchpath"))
    assert f"file://{project.root / 'proj' / 'conf'}" in info.stdout
    assert _tasks(info.stdout) == []


# ----------------------------------------------------------------------------------------------------------------
# Multirun


def test_multirun_runs_each_value_in_order_without_litter(project):
    before = _tree(project.root)
    result = _ok(_run(project, "-m", "model.optim.lr=0.1,0.01"))
    tasks = _tasks(result.stdout)
    assert [task["cfg"]["model"]["optim"]["lr"] for task in tasks] == [0.1, 0.01]
    assert {task["cwd"] for task in tasks} == {str(project.work)}
    assert _returned(result.stdout) is None
    result = _ok(_run(project, "model.optim.lr=1,2", "name=a,b", "--multirun"))
    assert [(t["cfg"]["model"]["optim"]["lr"], t["cfg"]["name"]) for t in _tasks(result.stdout)] == [
        (1, "a"), (1, "b"), (2, "a"), (2, "b"),
    ]  # fmt: skip
    assert _tree(project.root) == before  # the sweep folder held only multirun.yaml and empty job folders


def test_multirun_keeps_hydra_outputs_when_asked(project):
    _ok(_run(project, "-m", "model.optim.lr=1,2", "hydra.output_subdir=.hydra"))
    (sweep,) = (project.work / "multirun").glob("*/*")  # Hydra's usual multirun/<date>/<time>
    assert (sweep / "multirun.yaml").is_file()
    for job in ("0", "1"):
        saved = OmegaConf.load(sweep / job / ".hydra" / "config.yaml")
        assert saved.model.optim.lr == int(job) + 1
    # A sweep folder the user names is never removed, even with nothing but Hydra's bookkeeping in it.
    _ok(_run(project, "-m", "model.optim.lr=1,2", "hydra.sweep.dir=sweeps"))
    assert _tree(project.work / "sweeps") == {"multirun.yaml", "0", "1"}


# ----------------------------------------------------------------------------------------------------------------
# Errors: Hydra's short message, exit status 1, nothing left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-cn", "missing"], "Cannot find primary config 'missing'. Check that it's in your config search path."),
        (["model.optim.lrr=1"], "Could not override 'model.optim.lrr'.\nTo append to your config use +model"),
        (["model.optim.lr=["], "no viable alternative at input '['"),
        (["-m", "model.optim.lrr=1,2"], "Could not override 'model.optim.lrr'."),
    ],
)  # fmt: skip
def test_bad_config_or_override_is_a_short_error(project, args, message):
    before = _tree(project.root)
    result = _run(project, *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR=1" in result.stderr
    assert _tasks(result.stdout) == []
    assert _tree(project.root) == before


def test_failing_task_exits_1_with_the_task_error(project):
    result = _run(project, "+fail=true")
    assert result.returncode == 1
    assert "RuntimeError: task failed on purpose" in result.stderr
    assert "RETURN" not in result.stdout


# ----------------------------------------------------------------------------------------------------------------
# Schema


def test_schema_fills_defaults_and_converts_types(project):
    result = _ok(_run(project, "model.optim.lr=2", script=project.schema_script))
    cfg = _tasks(result.stdout)[0]["cfg"]
    assert cfg["model"]["optim"] == {"lr": 2.0, "betas": [0.9, 0.98], "weight_decay": 0.001}
    assert isinstance(cfg["model"]["optim"]["lr"], float)
    assert cfg["name"] == "demo"  # the YAML beats the schema's default
    assert "ConfigStore schema" not in result.stderr, result.stderr  # NeMo's name-matched schema: no deprecation noise


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-cn", "typo"], "Key 'lrr' not in 'Optim'"),  # a typo in the YAML
        (["model.optim.lrr=1"], "Key 'lrr' not in 'Optim'"),  # a typo in an override
        (["model.optim.lr=fast"], "Value 'fast' of type 'str' could not be converted to Float"),
        (["-cn", "sub/config"], "Give the folder with --config-path (-cp) and only the file name with --config-name"),
    ],
)
def test_schema_rejects_what_it_does_not_declare(project, args, message):
    result = _run(project, *args, script=project.schema_script)
    assert result.returncode == 1, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert _tasks(result.stdout) == []


# ----------------------------------------------------------------------------------------------------------------
# In-process: passthrough, imports, resolvers, the private parser, Hydra's config restored


def test_cfg_passthrough_calls_the_function_without_hydra():
    from compat.core.config import hydra_runner

    seen = []

    @hydra_runner(config_path="does/not/exist", config_name="nothing")
    def main(cfg):
        """Docstring kept."""
        seen.append(cfg)
        return cfg.a * 2

    cfg = OmegaConf.create({"a": 21})
    assert main(cfg) == 42
    assert seen == [cfg] and seen[0] is cfg
    assert main.__name__ == "main" and main.__doc__ == "Docstring kept."


@pytest.mark.parametrize(
    "first",
    [
        "from compat.core.config import hydra_runner",
        "import compat.core.config.hydra_runner",
        "from compat.core.config.hydra_runner import hydra_runner",
    ],
)
def test_every_import_form_gives_a_working_decorator(first):
    code = textwrap.dedent(
        f"""
        {first}
        import compat.core.config as package
        from compat.core.config import hydra_runner as from_package
        from compat.core.config.hydra_runner import hydra_runner as from_module
        from omegaconf import OmegaConf
        for decorator in (from_package, from_module, package.hydra_runner):
            main = decorator(config_path=".", config_name="config")(lambda cfg: cfg.x + 1)
            assert main(OmegaConf.create({{"x": 1}})) == 2, decorator
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_resolvers_registered_idempotently():
    module = importlib.import_module("compat.core.config.hydra_runner")
    importlib.reload(module)  # registering again must not raise (replace=True)
    cfg = OmegaConf.create({"a": 3, "b": "${multiply:${a},4}", "c": "${sum:${a},0.5}", "s": "${sum:ab,cd}"})
    assert (cfg.b, cfg.c, cfg.s) == (12, 3.5, "abcd")


class _NVMLError(Exception):
    pass


def _fake_pynvml(capability=None, fail=False) -> types.ModuleType:
    fake = types.ModuleType("pynvml")
    fake.NVMLError = _NVMLError
    calls = []

    def nvml_init():
        if fail:
            raise _NVMLError("Driver Not Loaded")
        calls.append("init")

    fake.nvmlInit = nvml_init
    fake.nvmlShutdown = lambda: calls.append("shutdown")
    fake.nvmlDeviceGetHandleByIndex = lambda index: ("handle", index)
    fake.nvmlDeviceGetCudaComputeCapability = lambda handle: capability
    fake.calls = calls
    return fake


@pytest.mark.parametrize(
    ("capability", "expected"), [((8, 0), "a100"), ((8, 6), "a100"), ((9, 0), "h100"), ((7, 5), None)]
)
def test_gpu_name_maps_compute_capability_like_nemo(monkeypatch, capability, expected):
    from compat.core.config.hydra_runner import _gpu_name

    fake = _fake_pynvml(capability)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert _gpu_name() == expected
    assert fake.calls == ["init", "shutdown"]
    assert OmegaConf.create({"g": "${gpu_name:}"}).g == expected


def test_gpu_name_is_none_without_driver_or_module(monkeypatch):
    from compat.core.config.hydra_runner import _gpu_name

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(fail=True))
    assert _gpu_name() is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert _gpu_name() is None


def test_hydra_private_parser_reads_the_command_line_like_hydra():
    from compat.core.config.hydra_runner import _parse_hydra_command_line

    args = _parse_hydra_command_line(["-cn", "cfg_a", "a=1", "+b=2", "~c", "++d=3"])
    assert (args.config_name, args.overrides, args.multirun) == ("cfg_a", ["a=1", "+b=2", "~c", "++d=3"], False)
    args = _parse_hydra_command_line(["--config-name=cfg_b", "-m", "lr=1,2", "--config-path", "conf"])
    assert (args.config_name, args.config_path, args.overrides, args.multirun) == ("cfg_b", "conf", ["lr=1,2"], True)
    assert _parse_hydra_command_line(["x=1"]).config_name is None


def test_hydra_config_swapped_only_while_running():
    from hydra.core.config_store import ConfigStore

    from compat.core.config.hydra_runner import _hydra_defaults

    store = ConfigStore.instance()

    def current():
        node = OmegaConf.to_container(store.load("hydra/config.yaml").node, resolve=False)
        return node["output_subdir"], node["run"]["dir"], [d for d in node["defaults"] if "job_logging" in d]

    original = current()
    assert original == (".hydra", "???", [{"job_logging": "default"}])  # Hydra's own
    with _hydra_defaults("multirun/x/y"):
        assert current() == (None, ".", [{"job_logging": "stdout"}])
        assert store.load("hydra/config.yaml").node.sweep.dir == "multirun/x/y"
    assert current() == original


def test_schema_without_any_config_name_is_an_error(tmp_path):
    code = textwrap.dedent(
        """
        import dataclasses
        from compat.core.config import hydra_runner

        @dataclasses.dataclass
        class Schema:
            a: int = 1

        @hydra_runner(config_path=".", schema=Schema)
        def main(cfg):
            print("ran")

        main()
        """
    )
    script = tmp_path / "no_name.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "hydra_runner(schema=...) needs a config name" in result.stderr
    assert "ran" not in result.stdout


# ----------------------------------------------------------------------------------------------------------------
# Unknown keys: the closest known key, and short messages for config errors


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["model.optim.lrr=1"], "unknown key model.optim.lrr; did you mean model.optim.lr?"),
        (["trainr.devices=2"], "unknown key trainr; did you mean trainer?"),
        (["-m", "model.optimm.lr=1,2"], "unknown key model.optimm; did you mean model.optim?"),
        (["model.optim.zzz=1"], "unknown key model.optim.zzz (model.optim keys: betas, lr)"),
        # a Lightning Trainer argument the YAML leaves out: Hydra's "+" advice is the right one
        (["trainer.max_steps=3"],
         "(trainer.max_steps is a valid key that this config leaves out: the + prefix adds it)"),
    ],
)  # fmt: skip
def test_override_of_a_missing_key_names_the_closest_one(project, args, hint):
    result = _run(project, *args)
    assert result.returncode == 1
    assert "To append to your config use +" in result.stderr  # Hydra's own message comes first
    assert result.stderr.rstrip().endswith(hint), result.stderr
    assert "Traceback" not in result.stderr and _tasks(result.stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["+model.optim.lrr=1"], "ConfigError: unknown key model.optim.lrr; did you mean model.optim.lr?"),
        (["+trainr.devices=2"], "ConfigError: unknown key trainr; did you mean trainer?"),
        (["+model.extra.x=1"], "ConfigError: unknown key model.extra (model keys: double_lr, drop_me, gpu, optim, "
                               "total)"),
        (["++model.optim.lrr=1"], "ConfigError: unknown key model.optim.lrr; did you mean model.optim.lr?"),
    ],
)  # fmt: skip
def test_schema_refuses_keys_added_with_plus(project, args, message):
    result = _run(project, *args, script=project.schema_script)
    assert result.returncode == 1, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr and _tasks(result.stdout) == []


def test_schema_allows_what_it_declares_and_free_form_blocks(tmp_path):
    code = textwrap.dedent(
        """
        import dataclasses, json
        from typing import Any, Dict, List, Optional
        from omegaconf import OmegaConf
        from compat.core.config import hydra_runner

        @dataclasses.dataclass
        class Item:
            a: int = 1

        @dataclasses.dataclass
        class Schema:
            free: Dict[str, Any] = dataclasses.field(default_factory=dict)
            items: List[Item] = dataclasses.field(default_factory=lambda: [Item()])
            later: Optional[Item] = None
            path: Optional[str] = None

        @hydra_runner(config_name="Schema", schema=Schema)
        def main(cfg):
            print("TASK " + json.dumps(OmegaConf.to_container(cfg)))

        main()
        """
    )
    script = tmp_path / "free.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("HYDRA_FULL_ERROR", None)
    ok = subprocess.run([sys.executable, str(script), "+free.anything=1", "path=x"], capture_output=True, text=True,
                        env=env, timeout=120, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert _tasks(ok.stdout) == [{"free": {"anything": 1}, "items": [{"a": 1}], "later": None, "path": "x"}]
    bad = subprocess.run([sys.executable, str(script), "+items.0.aa=2"], capture_output=True, text=True, env=env,
                         timeout=120, cwd=tmp_path)
    assert bad.returncode == 1 and _tasks(bad.stdout) == []
    assert "ConfigError: unknown key items[0].aa; did you mean items[0].a?" in bad.stderr, bad.stderr


TASK_CONFIG_ERROR = """\
from compat.core.config import hydra_runner
from nemofn.core.schema import ConfigError

@hydra_runner(config_path="../conf", config_name="config")
def main(cfg):
    raise ConfigError("unknown key model.optim.lrr; did you mean model.optim.lr?", key="model.optim.lrr")

if __name__ == "__main__":
    main()
"""


def test_config_error_of_the_task_is_one_short_message(project):
    script = project.script.with_name("config_error.py")
    script.write_text(TASK_CONFIG_ERROR)
    result = _run(project, script=script)
    assert result.returncode == 1
    assert "ConfigError: unknown key model.optim.lrr; did you mean model.optim.lr?" in result.stderr
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR=1" in result.stderr
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    env["PYTHONPATH"] = os.pathsep.join([str(project.root / "nvml_absent"), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    full = subprocess.run([sys.executable, str(script)], cwd=project.work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert full.returncode == 1 and "Traceback" in full.stderr
    assert "nemofn.core.schema.ConfigError: unknown key model.optim.lrr" in full.stderr  # the original, chained


def test_config_error_passes_through_unchanged_without_hydra():
    from compat.core.config import hydra_runner
    from nemofn.core.schema import ConfigError

    @hydra_runner(config_path="does/not/exist", config_name="nothing")
    def main(cfg):
        raise ConfigError("bad key", key="a")

    with pytest.raises(ConfigError, match="bad key"):
        main(OmegaConf.create({"a": 1}))


def test_override_hint_only_for_missing_keys():
    from hydra.errors import ConfigCompositionException

    from compat.core.config.hydra_runner import _override_hint

    cfg = OmegaConf.create({"model": {"optim": {"lr": 1}}})
    OmegaConf.set_struct(cfg, True)
    try:
        OmegaConf.update(cfg, "model.optimm.lr", 2, merge=True)
    except Exception as err:  # what Hydra wraps into its ConfigCompositionException
        composed = ConfigCompositionException("Could not override 'model.optimm.lr'.")
        composed.__cause__ = err
    assert _override_hint(composed) == "unknown key model.optimm; did you mean model.optim?"
    assert _override_hint(ConfigCompositionException("no cause")) is None
    assert _override_hint(RuntimeError("other")) is None and _override_hint(None) is None


TASK_DATA_ERROR = """\
import sys
from compat.core.config import hydra_runner
from nemofn.asr.data.errors import AudioError

@hydra_runner(config_path="../conf", config_name="config")
def main(cfg):
    if sys.argv[-1].endswith("bug"):
        raise KeyError("a bug of the script itself")
    raise AudioError("a.wav", "sample 7 is NaN")

if __name__ == "__main__":
    main()
"""


def test_a_data_error_of_the_task_is_one_short_message_but_a_bug_keeps_its_traceback(project):
    script = project.script.with_name("data_error.py")
    script.write_text(TASK_DATA_ERROR)
    result = _run(project, script=script)
    assert result.returncode == 1, result.stderr
    assert "AudioError: audio file a.wav: sample 7 is NaN" in result.stderr
    assert "Traceback" not in result.stderr
    bug = _run(project, "+x=bug", script=script)
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError" in bug.stderr
