"""Every option of every training config group composes and instantiates (tiny sizes, CPU)."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning import Trainer
from omegaconf import OmegaConf

from dlqsm.lit.datamodule import QSMDataModule, collate
from dlqsm.lit.losses import CompositeLoss
from dlqsm.lit.train import config_dir, instantiate_group
from dlqsm.models import QSMModel, build_from_config
from tests.lit.helpers import compose_train, sim_overrides

CONFIGS = config_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture
def compose(tmp_path):
    return lambda overrides: compose_train(overrides, tmp_path)


@pytest.fixture(scope="module")
def batch():
    from dlqsm.simulation.datasets import SimulatedQSMDataset

    ds = SimulatedQSMDataset(2, shape=(16, 16, 16), seed=3, source="shapes",
                             voxel_size=(0.9, 1.0, 1.3), max_tilt_deg=20.0)
    return collate([ds[0], ds[1]])


def test_group_folders_have_the_documented_options():
    assert {"sim", "disk", "mixture"} <= set(options("data"))
    assert {"unet", "basicunet", "tkd_resunet", "tv_resunet", "unrolled"} <= set(options("model"))
    assert {"cpu", "gpu", "gpu_bf16", "gpu_16", "ddp", "ddp_cpu"} <= set(options("trainer"))
    assert {"wandb", "csv", "tensorboard", "none"} <= set(options("logger"))
    assert {"quickstart_cpu", "deepqsm_shapes", "hybrid_unet", "unrolled"} <= \
        set(options("experiment"))
    assert (CONFIGS / "hydra" / "launcher" / "slurm.yaml").is_file()


@pytest.mark.parametrize("name", options("model"))
def test_model_options(compose, name, batch):
    cfg = compose([f"model={name}"])
    net = instantiate(cfg.model)
    assert isinstance(net, QSMModel)
    rebuilt = build_from_config(OmegaConf.to_container(cfg.model, resolve=True))
    rebuilt.load_state_dict(net.state_dict())
    net.eval(), rebuilt.eval()
    with torch.no_grad():
        out = net(batch["field"], batch["mask"], batch["b0_dir"], batch["voxel_size"])
        same = rebuilt(batch["field"], batch["mask"], batch["b0_dir"], batch["voxel_size"])
    assert out.shape == batch["chi"].shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, same)


@pytest.mark.parametrize("name", options("loss"))
def test_loss_options(compose, name, batch):
    loss = instantiate(compose([f"loss={name}"]).loss)
    assert isinstance(loss, CompositeLoss)
    total, parts = loss(batch["chi"] * 0.5, batch)
    assert total.ndim == 0 and total > 0 and parts


@pytest.mark.parametrize("opt", options("optimizer"))
@pytest.mark.parametrize("sched", options("scheduler"))
def test_optimizer_and_scheduler_options(compose, opt, sched):
    cfg = compose([f"optimizer={opt}", f"scheduler={sched}"])
    optimizer = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.Optimizer)
    if cfg.get("scheduler"):
        instantiate(cfg.scheduler)(optimizer=optimizer)


@pytest.mark.parametrize("recipe", options("simulation"))
def test_sim_data_with_every_simulation_recipe(compose, recipe):
    overrides = sim_overrides(16, recipe=recipe)
    sim = raw_compose("train", [f"simulation={recipe}"])["simulation"]
    if "shape" not in sim:  # a dataset wrapper: the settings sit one level down
        if "shape" not in (sim.get("dataset") or {}):
            pytest.skip("a wrapper of several datasets: only composed here (tested with them)")
        overrides = [o.replace("simulation.shape", "simulation.dataset.shape") for o in overrides]
    cfg = compose(overrides)
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, QSMDataModule)
    assert dm.train_dataset.seed != dm.val_dataset.seed
    b = next(iter(dm.train_dataloader()))
    assert b["field"].shape == (2, 1, 16, 16, 16) and b["labels"].dtype == torch.int64


@pytest.fixture(scope="module")
def disk_root(tmp_path_factory):
    from dlqsm.simulation.datasets import SimulatedQSMDataset
    from dlqsm.simulation.disk import write_dataset

    root = tmp_path_factory.mktemp("data")
    for split, seed in (("train", 0), ("val", 1)):
        write_dataset(SimulatedQSMDataset(2, shape=(16, 16, 16), seed=seed),
                      root / "sim" / split, progress=False)
    return root


@pytest.mark.parametrize("name", ["disk", "mixture"])
def test_disk_and_mixture_data(compose, disk_root, name):
    cfg = compose([f"data={name}", f"paths.data_dir={disk_root}", "simulation.shape=[16,16,16]",
                   "data.num_workers=0", "data.batch_size=2"])
    dm = instantiate(cfg.data, _convert_="all")
    b = next(iter(dm.val_dataloader()))
    assert b["chi"].shape[1:] == (1, 16, 16, 16)


@pytest.mark.parametrize("name", options("logger"))
def test_logger_options(compose, name, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    loggers = instantiate_group(compose([f"logger={name}"]).get("logger"))
    assert len(loggers) == (0 if name == "none" else 1)


def test_wandb_is_offline_by_default(compose, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose(["logger=wandb"])
    assert cfg.logger.wandb.mode == "offline"


@pytest.mark.parametrize("name", [*options("callbacks"), "[default,early_stopping]"])
def test_callback_options(compose, name):
    callbacks = instantiate_group(compose([f"callbacks={name}"]).get("callbacks"))
    kinds = {type(c).__name__ for c in callbacks}
    if name in ("default", "minimal"):
        assert {"ModelCheckpoint", "MetadataExport"} <= kinds
    if name == "default":
        assert {"SlicePanels", "LearningRateMonitor", "TQDMProgressBar"} <= kinds
    if "early_stopping" in name:
        assert "EarlyStopping" in kinds


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options(compose, name):
    cfg = compose([f"trainer={name}", "logger=none"])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.precision in ("32-true", "bf16-mixed", "16-mixed")
        pytest.skip("GPU trainer: composed only (no CUDA here)")
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, Trainer)
    if name == "ddp_cpu":
        assert trainer.world_size == 2


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_options(compose, name):
    cfg = compose([f"experiment={name}", "logger=none"])
    assert isinstance(instantiate(cfg.model), QSMModel)
    for split in ("train_dataset", "val_dataset"):
        node = cfg.data[split]
        if node._target_.endswith("DiskQSMDataset"):  # stored data: write a tiny set first
            from dlqsm.simulation.datasets import HeadCaseDataset
            from dlqsm.simulation.disk import write_dataset
            from dlqsm.simulation.wrappers import WithInitialEstimate

            ds = WithInitialEstimate(HeadCaseDataset(1, shape=(24, 28, 24)), method="tkd")
            write_dataset(ds, node.root, compress=False, progress=False)
    dm = instantiate(cfg.data, _convert_="all")
    assert len(dm.train_dataset) > 0
    assert cfg.trainer.max_epochs > 0


@pytest.mark.parametrize("name", options("debug"))
def test_debug_options(compose, name):
    cfg = compose([f"debug={name}"])
    assert cfg.task_name == "debug" and cfg.trainer.accelerator == "cpu"


def test_slurm_launcher_follows_the_trainer(compose, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hcompose("train", overrides=["hydra/launcher=slurm", "trainer=ddp",
                                           "trainer.devices=4", "trainer.num_nodes=2"],
                       return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


def test_optuna_search_config(compose):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hcompose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert "optimizer.lr" in cfg.hydra.sweeper.params
    assert cfg.optimized_metric == "val/nrmse"


def test_configs_dir_is_the_repository_one():
    assert CONFIGS == (Path(__file__).resolve().parents[1] / "configs")


# ---- every option keeps the values it sets; experiments and debug configs do what they say ----

OWN_GROUPS = ["data", "simulation", "model", "loss", "optimizer", "scheduler", "trainer",
              "logger", "callbacks", "paths"]  # the groups of configs/train.yaml's defaults list


def raw_compose(config: str, overrides: list[str]) -> dict:
    """The composed config as a plain dict, interpolations unresolved (as ``--cfg job``)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return OmegaConf.to_container(hcompose(config, overrides=overrides), resolve=False)


def own_values(group: str, option: str) -> tuple[dict, list[str]]:
    """The values an option file sets itself, at their place in the composed config, and the
    ``override /group: option`` entries of its defaults list."""
    path = CONFIGS / group / f"{option}.yaml"
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    defaults = values.pop("defaults", None) or []
    overrides = [f"{k.split()[-1].strip('/')}={v}" for d in defaults if isinstance(d, dict)
                 for k, v in d.items() if k.startswith("override")]
    if values and "# @package _global_" not in path.read_text():
        values = {group: values}
    values.pop("hydra", None)
    return values, overrides


def leaves(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def lookup(tree: dict, key: tuple):
    for k in key:
        assert isinstance(tree, dict) and k in tree, f"{'.'.join(map(str, key))} is missing"
        tree = tree[k]
    return tree


def assert_survives(composed: dict, values: dict, skip: tuple = ()):
    for key, value in leaves(values):
        if any(key[:len(s)] == s for s in skip):
            continue
        assert lookup(composed, key) == value, f"{'.'.join(map(str, key))} was overridden"


def non_deprecated(group: str) -> list[str]:
    from dlqsm.lit.train import DEPRECATED_OPTIONS

    return [o for o in options(group) if o not in DEPRECATED_OPTIONS.get(group, {})]


@pytest.mark.parametrize("group,option", [(g, o) for g in OWN_GROUPS for o in options(g)])
def test_every_group_option_keeps_its_own_values(group, option):
    """`simulation=head` must give the head recipe (train.yaml's own values come first)."""
    values, _ = own_values(group, option)
    composed = raw_compose("train", [f"{group}={option}"])
    assert_survives(composed, values)
    if group == "simulation":  # one recipe, whether trained on or written by dlqsm simulate
        assert composed["simulation"] == raw_compose("simulate", [f"simulation={option}"])[
            "simulation"]


def test_the_head_recipe_is_the_head_recipe():
    sim = raw_compose("train", ["simulation=head"])["simulation"]
    assert sim["shape"] == [96, 96, 96] and sim["voxel_size_range"] == [1.5, 2.2]
    assert raw_compose("train", [])["simulation"]["voxel_size"] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("group,option", [("experiment", o) for o in options("experiment")]
                         + [("debug", o) for o in options("debug")])
def test_experiments_and_debug_configs_compose_to_what_they_say(group, option):
    """An experiment's own values survive, and so do those of every group option it picks
    (except the keys it sets itself)."""
    from dlqsm.lit.train import DEPRECATED_OPTIONS

    option = DEPRECATED_OPTIONS.get(group, {}).get(option, option)
    values, picks = own_values(group, option)
    composed = raw_compose("train", [f"{group}={option}"])
    assert_survives(composed, values)
    set_here = tuple(k for k, _ in leaves(values))
    for pick in picks:
        g, o = pick.split("=")
        picked, _ = own_values(g, o)
        assert_survives(composed, picked, skip=set_here)


@pytest.mark.parametrize("group", ["model", "experiment"])
def test_deprecated_aliases_compose_like_the_new_name_and_warn(group):
    from dlqsm.lit.train import DEPRECATED_OPTIONS, warn_deprecated_options

    for old, new in DEPRECATED_OPTIONS[group].items():
        assert raw_compose("train", [f"{group}={old}"]) == raw_compose("train", [f"{group}={new}"])
        with pytest.warns(DeprecationWarning, match=f"{group}={new}"):
            assert warn_deprecated_options({group: old})
        assert warn_deprecated_options({group: new}) == []


def listed_options(text: str) -> dict[str, set[str]]:
    """``group={a,b}`` entries of a help text."""
    import re

    return {g: {o.strip() for o in opts.split(",")}
            for g, opts in re.findall(r"([\w/]+)=\{([^}]*)\}", text)}


def train_yaml_option_comments() -> dict[str, set[str]]:
    """Options named in train.yaml's defaults list comments: ``- group: x  # a | b`` or a
    ``# group: a | b`` line (continued by ``#   | c`` lines) above the entry."""
    import re

    text = (CONFIGS / "train.yaml").read_text()
    block = text[text.index("defaults:"):text.index("\n\n", text.index("defaults:"))]
    found, last = {}, None
    for line in block.splitlines():
        inline = re.match(r"\s+- (\w+): \S+\s+# (.*)", line)
        above = re.match(r"\s+# (\w+): (.*)", line)
        more = re.match(r"\s+#\s+\| (.*)", line)
        if inline or above:
            last = (inline or above).group(1)
            found[last] = (inline or above).group(2)
        elif more and last:
            found[last] += " | " + more.group(1)
        else:
            last = None
    out = {}
    for group, comment in found.items():
        comment = re.sub(r"\([^)]*\)", "", comment.split(";")[0])
        out[group] = {part.split()[0] for part in comment.split("|") if part.split()}
    return out


def test_train_yaml_comments_list_every_option():
    listed = train_yaml_option_comments()
    for group in [*OWN_GROUPS, "experiment", "debug"]:
        if group != "paths":
            assert listed.get(group) == set(non_deprecated(group)), group


@pytest.mark.parametrize("command", ["train", "simulate"])
def test_cli_help_lists_every_option(command):
    import importlib

    listed = listed_options(importlib.import_module(f"dlqsm.cli.{command}").EPILOG)
    groups = [*OWN_GROUPS, "experiment", "debug"] if command == "train" else ["simulation"]
    for group in groups:
        if group == "paths":
            continue
        assert listed.get(group) == set(non_deprecated(group)), group
