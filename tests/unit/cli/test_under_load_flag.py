"""``careflow-ha drill run NAME --under-load`` hands the drill a Locust background load (cluster work mocked)."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

import careflow_ha.cli.drills as drills_cli
from careflow_ha.cli import main
from careflow_ha.drills.targets import verdicts
from careflow_ha.settings import PORT_DEFAULTS, SECRET_KEYS, Settings
from tests.unit.drills.test_report import make_run


@pytest.mark.parametrize("flag", [True, False])
def test_under_load_passes_a_background_factory(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys, flag: bool) -> None:
    settings = Settings(project_dir=tmp_path, ports=MappingProxyType(dict(PORT_DEFAULTS)),
                        secrets=MappingProxyType({k: f"secret-{i}-value" for i, k in enumerate(SECRET_KEYS)}))
    seen = []

    def fake_run_drill(fault, settings_, engine, control, options, progress):
        seen.append(options.background)
        run = make_run()
        return dataclasses.replace(run, name=fault.name, verdicts=verdicts(fault.name, options.preset,
                                                                           options.synchronous, run.analysis, True))

    monkeypatch.setattr(drills_cli, "get_settings", lambda ctx=None: settings)
    monkeypatch.setattr(drills_cli, "detect_engine", lambda name=None: object())
    monkeypatch.setattr(drills_cli, "run_drill", fake_run_drill)
    argv = ["drill", "run", "switchover", "--force", *(["--under-load"] if flag else [])]
    with pytest.raises(SystemExit):
        main(argv)
        raise SystemExit(0)
    capsys.readouterr()
    (background,) = seen
    if not flag:
        assert background is None
        return
    import careflow_ha.load.background as load_background

    started = []
    monkeypatch.setattr(load_background, "background", lambda cfg, progress: started.append(cfg) or "ctx")
    assert background() == "ctx"  # the drill enters this around the fault; Locust is not started here
    (cfg,) = started
    assert cfg.cluster is settings and ":5000/" in cfg.dsn_rw and ":5001/" in cfg.dsn_ro
