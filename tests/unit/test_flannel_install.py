"""The installed `flannel` launcher runs the plugin without site-packages."""

from __future__ import annotations

import json
import subprocess

from flannelcni.install import install


def test_installed_plugin_answers_version(tmp_path) -> None:
    path = install(str(tmp_path / "bin"))
    assert (tmp_path / "bin" / "flannel").stat().st_mode & 0o777 == 0o755
    proc = subprocess.run([path], input=b'{"cniVersion": "0.3.1"}', capture_output=True,
                          env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "0.3.1" in out["supportedVersions"]


def test_launcher_imports_nothing_heavy(tmp_path) -> None:
    path = install(str(tmp_path / "bin"))
    probe = open(path).read().replace("sys.exit(main())",
                                      "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                                      "('grpc', 'google', 'yaml', 'pyroute2', 'cri_shim', 'site')))")
    (tmp_path / "probe").write_text(probe)
    (tmp_path / "probe").chmod(0o755)
    proc = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
