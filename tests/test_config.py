import tomllib

import pytest

from asiarch.config import Config, ConfigError, demo_config, from_dict, load_config, render_toml, stage_train, validate


def test_defaults_and_demo_validate():
    cfg = from_dict({})
    assert cfg.train.nproc == 2 and cfg.search.class_name == "DeltaNet"
    assert demo_config().budget.candidates == 8


def test_unknown_key_names_key_and_valid_ones():
    with pytest.raises(ConfigError) as e:
        from_dict({"train": {"stepz": 10}})
    msg = str(e.value)
    assert "train.stepz" in msg and "steps" in msg and "hidden_size" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown key trian.*valid keys: experiment"):
        from_dict({"trian": {}})


@pytest.mark.parametrize("data, needle", [
    ({"train": {"steps": "100"}}, "train.steps: expected an integer"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"train": {"steps": True}}, "train.steps: expected an integer"),
    ({"cluster": {"scheduler": "pbs"}}, "cluster.scheduler: 'pbs' is not one of 'local', 'slurm'"),
    ({"baselines": {"names": "deltanet"}}, "baselines.names: expected a list of str"),
    ({"train": {"hidden_size": 65, "num_heads": 2}}, "divisible by train.num_heads"),
    ({"train": {"task": "lm"}}, "needs train.data"),
    ({"baselines": {"reference": "mamba"}}, "must be one of baselines.names"),
    ({"search": {"proposer": "llm"}}, "needs llm.base_url"),
    ({"train": "x"}, "expected a table [train]"),
    ({"llm": {"prices": ["gpt-4o=2.5"]}}, "llm.prices: 'gpt-4o=2.5' should look like 'MODEL=PROMPT/COMPLETION'"),
    ({"llm": {"agent_base_urls": ["planner=http://h/v1"]}}, "llm.agent_base_urls: 'planner=http://h/v1' should look"),
    ({"llm": {"structured": "xml"}}, "llm.structured: 'xml' is not one of 'auto', 'json_schema', 'text'"),
    ({"llm": {"max_reasks": -1}}, "llm.max_reasks must be >= 0"),
    ({"search": {"novelty_threshold": 1.5}}, "search.novelty_threshold must be in (0, 1]"),
    ({"budget": {"llm_dollars": -1}}, "budget.llm_dollars must be >= 0"),
])
def test_bad_values_are_named(data, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert needle in str(e.value)


def test_int_accepted_for_float():
    cfg = from_dict({"fitness": {"scale": 1}})
    assert cfg.fitness.scale == 1.0 and isinstance(cfg.fitness.scale, float)


def test_rendered_toml_is_commented_and_round_trips(tmp_path):
    cfg = demo_config("rt")
    cfg.cluster.binds = ["/data:/data"]
    text = render_toml(cfg)
    assert "# Training precision" in text and "One of: fp32, bf16" in text
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert load_config(path) == cfg
    # every key appears, with a comment above it
    data = tomllib.loads(text)
    assert set(data) == {f for f in Config.__dataclass_fields__}


def test_api_key_is_never_written(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_LLM_KEY", "sk-very-secret")
    cfg = from_dict({"llm": {"api_key_env": "MY_LLM_KEY"}})
    assert cfg.api_key() == "sk-very-secret"
    assert "sk-very-secret" not in render_toml(cfg)
    assert "sk-very-secret" not in repr(cfg)


def test_llm_keys_reach_the_client_settings():
    from asiarch.propose.llm.client import LLMSettings

    cfg = from_dict({"search": {"proposer": "mixed", "llm_fraction": 0.25},
                     "llm": {"base_url": "http://h:8000/v1", "model": "m", "analyst_model": "big",
                             "agent_base_urls": ["analyst=http://other/v1"], "prices": ["big=1/2"],
                             "temperature": 0.7, "max_tokens": 0, "backoff_s": 0.5, "structured": "text"},
                     "budget": {"llm_dollars": 3}})
    s = LLMSettings.from_config(cfg)
    assert (s.model_for("analyst"), s.model_for("researcher")) == ("big", "m")
    assert (s.url_for("analyst"), s.url_for("engineer")) == ("http://other/v1", "http://h:8000/v1")
    assert s.price_for("big") == (1.0, 2.0) and s.dollar_cap == 3.0 and s.structured == "text"
    assert s.temperature == 0.7 and s.max_tokens is None and s.backoff_s == 0.5
    assert LLMSettings.from_config(from_dict({"llm": {"base_url": "u"}})).temperature is None  # -1: the server's


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file.*asiarch init"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[train]\nsteps = -5\n")
    with pytest.raises(ConfigError, match="wrong.toml: train.steps must be positive"):
        load_config(wrong)


def test_site_profile_fills_cluster_keys_and_the_config_wins(tmp_path):
    cfg = from_dict({"cluster": {"site_profile": "example-gpu", "partition": "mine"}})
    assert cfg.cluster.partition == "mine"               # the experiment's own key wins
    assert cfg.cluster.gpus_per_node == 4 and cfg.cluster.modules == ["cuda/12.4"]
    own = tmp_path / "site.toml"
    own.write_text('[cluster]\nscheduler = "slurm"\naccount = "lab7"\nqos = "long"\n')
    (tmp_path / "config.toml").write_text('[cluster]\nsite_profile = "site.toml"\n')
    assert load_config(tmp_path / "config.toml").cluster.account == "lab7"  # relative to the config


def test_bad_site_profiles_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such profile; shipped profiles: .*example-gpu"):
        from_dict({"cluster": {"site_profile": "nowhere"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster]\npartitoin = 'gpu'\n")
    with pytest.raises(ConfigError, match="bad.toml: unknown key cluster.partitoin"):
        from_dict({"cluster": {"site_profile": str(bad)}})
    with pytest.raises(ConfigError, match="sbatch_extra"):
        from_dict({"cluster": {"sbatch_extra": ["--mail-type=END"]}})


def test_stage_and_evaluation_keys_are_checked(tmp_path):
    from asiarch.config import ConfigError, demo_config, validate

    cfg = demo_config()
    cfg.verify.enabled, cfg.verify.promote = True, "beats_baseline"
    with pytest.raises(ConfigError, match="needs train.seeds >= 2"):
        validate(cfg)
    cfg = demo_config()
    cfg.train.mqar_eval = ["8by128"]
    with pytest.raises(ConfigError, match="PAIRSxLENGTH"):
        validate(cfg)
    cfg.train.mqar_eval = ["40x128"]
    with pytest.raises(ConfigError, match="pairs <= vocab_size // 4"):
        validate(cfg)
    cfg = demo_config()
    cfg.train.lm_eval_tasks = ["piqa"]
    with pytest.raises(ConfigError, match="needs train.task = 'lm' with train.data"):
        validate(cfg)
    cfg.train.task, cfg.train.vocab_size, cfg.train.token_file = "lm", 256, "tokens.u16"
    with pytest.raises(ConfigError, match="needs train.task = 'lm' with train.data"):  # the tokenizer is the manifest's
        validate(cfg)
    cfg = demo_config()
    cfg.verify.enabled, cfg.verify.hidden_size = True, 65
    with pytest.raises(ConfigError, match="verify.hidden_size"):
        validate(cfg)


def test_lm_eval_keys_and_the_key_they_replaced(tmp_path):
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text('[train]\nlm_eval = ["piqa=/data/piqa.jsonl"]\n')
    with pytest.raises(ConfigError, match=r"train.lm_eval: replaced by lm_eval_tasks .*lm_eval_include"):
        load_config(cfg_file)
    cfg = demo_config()
    cfg.train.lm_eval_tasks = ["arc_easy,piqa"]
    cfg.train.task, cfg.train.data = "lm", ""
    with pytest.raises(ConfigError, match="needs train.data"):
        validate(cfg)
    # verification's limit: -1 keeps [train]'s, 0 scores every sample
    cfg = demo_config()
    cfg.train.lm_eval_limit = 500
    assert stage_train(cfg, "verify").lm_eval_limit == 500
    cfg.verify.lm_eval_limit = 0
    assert stage_train(cfg, "verify").lm_eval_limit == 0 and stage_train(cfg, "explore").lm_eval_limit == 500


def test_relative_data_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    from asiarch.data.prepare import prepare

    exp = tmp_path / "exp"
    (exp / "tasks").mkdir(parents=True)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join('{"text": "%s"}\n' % ("word " * 200) for _ in range(30)))
    prepare([str(corpus)], tokenizer="bytes", out=exp / "data", val_tokens=1500)
    (exp / "config.toml").write_text('[train]\ntask = "lm"\ndata = "data"\nlm_eval_include = "tasks"\n'
                                     'lm_eval_tasks = ["t"]\n')
    monkeypatch.chdir(tmp_path)  # not the experiment directory
    cfg = load_config(exp / "config.toml")
    assert cfg.train.data == str(exp.absolute() / "data") and cfg.train.lm_eval_include == str(exp.absolute() / "tasks")


def test_presets_write_configs_with_their_sources(tmp_path, capsys):
    """`asiarch init --preset`: ASI-Arch's values, each with where it comes from; the config loads once its data
    is there (before, the error says how to prepare it)."""
    from asiarch.cli import main
    from asiarch.presets import ASI_ARCH_TASKS

    assert main(["init", str(tmp_path / "a"), "--preset", "asi-arch"]) == 0
    text = (tmp_path / "a" / "config.toml").read_text()
    assert "hidden_size = 256" in text and "seq_len = 2048" in text and 'precision = "bf16"' in text
    assert "#   -> preset asi-arch: ASI-Arch (arXiv 2507.18074), exploration: 2,000 steps\nsteps = 2000" in text
    with pytest.raises(ConfigError, match="asiarch data prepare"):
        load_config(tmp_path / "a" / "config.toml")
    data = tomllib.loads(text)
    data["train"].pop("data")
    data["train"]["task"] = "mqar"  # everything else of the preset validates
    data["train"].pop("lm_eval_tasks")
    data["verify"].pop("lm_eval_tasks")
    cfg = from_dict(data, tmp_path / "a")
    assert (cfg.train.steps, cfg.verify.hidden_size, cfg.verify.num_layers, cfg.train.lm_eval_limit) == (2000, 1024, 24, 500)
    assert tomllib.loads(text)["train"]["lm_eval_tasks"] == ASI_ARCH_TASKS
    assert main(["init", str(tmp_path / "b"), "--preset", "nope"]) == 2
    assert "presets: asi-arch" in capsys.readouterr().err
