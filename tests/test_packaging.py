"""The built-in catalog ships inside the wheel and is found by an installed apex-opt run from any folder."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

from tests.conftest import REPO


def test_a_plain_wheel_installed_in_a_fresh_venv_finds_the_catalog(tmp_path: Path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
                           capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("apex_opt-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # the dependencies come from the running environment: its site-packages go on the path *after* the
    # fresh venv's own, so the wheel's apex_opt is the one imported
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "zz_test_deps.pth").write_text("\n".join(deps) + "\n")
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)],
                             capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import json, apex_opt.catalog as c; "
             "print(json.dumps([str(c.specs_dir()), len(c.MODELS.names()), len(c.GPUS.names())]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(py), "-c", probe], cwd=elsewhere, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    where, models, gpus = json.loads(out.stdout)
    assert "site-packages" in where and where.endswith("_specs")
    assert models >= 10 and gpus >= 7
    cli = subprocess.run([str(env_dir / "bin" / "apex-opt"), "catalog", "workloads", "--format", "json"],
                         cwd=elsewhere, capture_output=True, text=True, env=env, check=False)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert {"lmsys", "creation", "summarization"} <= {w["name"] for w in json.loads(cli.stdout)}
