import pytest

from qtrain.config import ConfigError, dump_yaml, load_config
from qtrain.config.loader import from_yaml_text


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "name", ["default", "sgd", "adam", "ecq-sgd", "qadam", "efficient-adam", "qcmd-adagrad", "qrda-adagrad"]
)
def test_shipped_configs_load(name):
    cfg = load_config(f"configs/{name}.yaml")
    assert cfg.algorithm.name == (name if name != "default" else "efficient-adam")


def test_defaults_for_every_field():
    cfg = load_config(None)
    assert cfg.seed == 0 and cfg.data.name == "digits" and cfg.uplink.bucket == 512


@pytest.mark.parametrize(
    "text, match",
    [
        ("modle: {name: mlp}\n", "unknown key 'modle'"),
        ("model: {nme: mlp}\n", "unknown key 'model.nme'"),
        ("seed: abc\n", "seed must be an integer"),
        ("seed: true\n", "seed must be an integer"),
        ("algorithm: {lr: fast}\n", "algorithm.lr must be a number"),
        ("uplink: {error_feedback: 1}\n", "uplink.error_feedback must be true or false"),
        ("model: {hidden: 64}\n", "model.hidden must be a list"),
        ("train: {steps: 10, epochs: 1}\n", "not both"),
        ("train: {steps: 0}\n", "train.steps must be > 0"),
        ("algorithm: {name: adamw}\n", "unknown algorithm 'adamw'"),
        ("data: {name: mnist}\n", "unknown dataset 'mnist'"),
        ("uplink: {codec: zip}\n", "unknown codec 'zip'"),
        ("uplink: {codec: sign, bits: 2}\n", "sends 1 bits"),
        ("uplink: {codec: sign, norm: l2}\n", "uplink.norm is not a parameter of codec 'sign'"),
        ("uplink: {codec: uniform, bits: 12}\n", "bits must be an integer in 2..8"),
        ("algorithm: {name: qcmd-adagrad}\ndownlink: {error_feedback: true}\n", "no downlink residual"),
        ("algorithm: {beta2: 1.0}\n", "beta2 must be in"),
        ("algorithm: {name: adam, l1: 0.1}\n", "l1 applies to"),
        ("[1, 2]\n", "must be a mapping"),
        # non-finite numbers: every float key, named (.nan once disabled every deadline)
        ("algorithm: {lr: .nan}\n", "algorithm.lr must be a finite number"),
        ("algorithm: {ef_alpha: .nan}\n", "algorithm.ef_alpha must be a finite number"),
        ("train: {epochs: .inf}\n", "train.epochs must be a finite number"),
        ("runtime: {timeout_s: .nan}\n", "runtime.timeout_s must be a finite number"),
        ("algorithm: {beta1: -.inf}\n", "algorithm.beta1 must be a finite number"),
        ("algorithm: {lr: 1e999}\n", "algorithm.lr must be a finite number"),
        # sizes with bounds (uplink.bucket=4294967295 grew each worker to 12 GB)
        ("uplink: {bucket: 4294967295}\n", "uplink.bucket must be at most 16777216"),
        ("downlink: {bucket: 0}\n", "downlink.bucket must be > 0"),
        ("runtime: {segments: 100000000}\n", "runtime.segments must be at most"),
        ("runtime: {segments: 4, segment_bytes: 1000000}\n", "segments or runtime.segment_bytes, not both"),
        ("runtime: {segments: -1}\n", "runtime.segments must be >= 0"),
        ("runtime: {timeout_s: 1e12}\n", "runtime.timeout_s must be at most"),
        ("data: {batch_size: 1000000000}\n", "data.batch_size must be at most"),
        ("model: {hidden: [64, 100000000]}\n", "model.hidden\\[1\\] must be at most"),
        ("seed: 100000000000000000000\n", "seed must be at most"),
        ("a: [\n", "not valid YAML at line"),
    ],
)
def test_bad_configs_name_the_key_and_the_file(tmp_path, text, match):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(p)
    assert str(p) in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_a_directory_or_a_binary_file_is_named_as_such(tmp_path):
    with pytest.raises(ConfigError, match=f"'{tmp_path}' is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=f"{binary}: not a text \\(UTF-8\\) YAML file"):
        load_config(binary)


def test_overrides(tmp_path):
    cfg = load_config(
        "configs/default.yaml",
        ["algorithm.lr=0.5", "model.hidden=[8, 8]", "uplink.bits=1", "algorithm.eps=1e-6"],
    )
    assert cfg.algorithm.lr == 0.5 and cfg.model.hidden == [8, 8] and cfg.algorithm.eps == 1e-6
    with pytest.raises(ConfigError, match="--set algorithm.lrr: unknown key 'algorithm.lrr'"):
        load_config("configs/default.yaml", ["algorithm.lrr=1"])
    with pytest.raises(ConfigError, match="--set seed must be an integer"):
        load_config("configs/default.yaml", ["seed=x"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config("configs/default.yaml", ["seed"])


def test_yaml_round_trip():
    cfg = load_config("configs/qadam.yaml", ["algorithm.lr=0.004"])
    assert from_yaml_text(dump_yaml(cfg)) == cfg


def test_link_defaults_and_overrides():
    from qtrain.algorithms.links import resolve_links

    _, up, down = resolve_links(load_config(None, ["algorithm.name=ecq-sgd"]))
    assert up.codec.name == "uniform" and up.codec.bits == 2 and up.codec.rounding == "stochastic"
    assert up.error_feedback and down.codec.name == "none"
    _, up, _ = resolve_links(load_config(None, ["algorithm.name=ecq-sgd", "uplink.bits=4"]))
    assert up.codec.bits == 4 and up.codec.norm == "linf"
    _, up, _ = resolve_links(load_config(None, ["algorithm.name=ecq-sgd", "uplink.levels=2"]))
    assert up.codec.levels == 2 and up.codec.bits == 3
    _, up, down = resolve_links(
        load_config(None, ["algorithm.name=efficient-adam", "uplink.error_feedback=false"])
    )
    assert not up.error_feedback and down.error_feedback and down.codec.name == "sign"


def test_nested_keys_of_a_free_form_mapping_can_be_set():
    cfg = load_config("configs/default.yaml", ["model.kwargs.track=false", "model.kwargs.block.width=3"])
    assert cfg.model.kwargs == {"track": False, "block": {"width": 3}}


def test_an_error_that_a_set_causes_names_the_set(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set algorithm.lr=-1: algorithm.lr must be > 0"):
        load_config("configs/default.yaml", ["train.steps=5", "algorithm.lr=-1"])
    with pytest.raises(ConfigError, match=r"^--set train.eval_every=0: train.eval_every"):
        load_config("configs/default.yaml", ["algorithm.lr=-1", "algorithm.lr=0.01", "train.eval_every=0"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {eval_every: 0}\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: train.eval_every"):  # a file wrong by itself is named
        load_config(bad, ["algorithm.lr=0.01"])


def test_a_shipped_config_is_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for name in ("sgd", "sgd.yaml", "configs/sgd.yaml"):
        assert load_config(name).algorithm.name == "sgd"
    (tmp_path / "sgd.yaml").write_text("algorithm: {name: adam}\n")  # a file that exists wins
    assert load_config("sgd.yaml").algorithm.name == "adam"
    with pytest.raises(ConfigError, match="does not exist .shipped configs, by name: adam, default"):
        load_config("nope")


def test_a_resume_may_change_the_learning_rate_and_lists_every_change():
    from qtrain.config import dump_yaml
    from qtrain.runtime.resume import config_changes, resume_changes

    saved = dump_yaml(load_config("configs/qadam.yaml"))
    now = dump_yaml(load_config("configs/qadam.yaml", ["algorithm.lr=0.0005", "train.eval_every=5"]))
    assert config_changes(saved, now) == []
    assert resume_changes(saved, now) == {"algorithm.lr": [0.002, 0.0005], "train.eval_every": [100, 5]}
    other = dump_yaml(load_config("configs/qadam.yaml", ["algorithm.beta2=0.9", "runtime.segments=2"]))
    assert config_changes(saved, other) == ["algorithm.beta2"]  # the cut changes no bit: it may change


@pytest.mark.parametrize(
    "runtime, count",
    [
        ("{segments: 1, segment_bytes: 0}", 1),  # every config.yaml written before the size default
        ("{segments: 1, segment_bytes: 4096}", 0),  # an old run cut by size: it still is
        ("{segments: 4, segment_bytes: 0}", 4),
        ("{segments: 4}", 4),
        ("{}", 0),  # the default: by size
    ],
)
def test_configs_written_before_the_size_default_keep_their_cut(tmp_path, runtime, count):
    path = tmp_path / "old.yaml"
    path.write_text(f"runtime: {runtime}\n")
    assert load_config(str(path)).runtime.segment_count == count
