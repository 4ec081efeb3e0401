"""Elasticsearch from the integ-test zip on Maven Central, run as a dedicated non-root user.

ES refuses to run as root. When we are root, ES runs as `settings.elasticsearch_user` (created
on demand) and its home, data and logs live under /var/lib/<user>/<key>, because the default
stack_dir sits below /root, which other users cannot traverse. `key` is derived from stack_dir
so two stacks never share a data folder; stack_dir/elasticsearch/home links there.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import httpx

from deploy.local import tools
from deploy.local.errors import MissingToolError
from deploy.local.process import file_lock, port_open
from deploy.local.server import Launch, Server

HOST = "127.0.0.1"
ROOT_BASE = Path("/var/lib")


class Elasticsearch(Server):
    """Elasticsearch: single node, security off, disk threshold off, readiness by cluster health."""

    name = "elasticsearch"

    @property
    def version(self) -> str:
        return self.settings.elasticsearch_version

    @property
    def address(self) -> str:
        return f"http://{HOST}:{self.settings.elasticsearch_port}"

    @property
    def ports(self) -> list[int]:
        return [self.settings.elasticsearch_port, self.settings.elasticsearch_transport_port]

    @property
    def run_as(self) -> str | None:
        """The user ES runs as: the configured one when we are root, else ourselves."""
        return self.settings.elasticsearch_user if os.geteuid() == 0 else None

    @property
    def root(self) -> Path:
        """The folder that holds the ES home, data, logs and temp files."""
        if self.run_as is None:
            return self.dir
        key = hashlib.sha1(str(self.settings.stack_dir.resolve()).encode()).hexdigest()[:10]
        return ROOT_BASE / self.run_as / key

    @property
    def home(self) -> Path:
        """The unpacked distribution (ES_HOME)."""
        return self.root / f"elasticsearch-{self.version}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _ensure_user(self) -> pwd.struct_passwd:
        user = self.run_as
        assert user is not None
        try:
            return pwd.getpwnam(user)
        except KeyError:
            pass
        useradd = shutil.which("useradd")
        if useradd is None:
            raise MissingToolError(
                f"useradd not found: create the system user {user!r} for Elasticsearch yourself"
            )
        subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                str(ROOT_BASE / user),
                "--shell",
                "/usr/sbin/nologin",
                user,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(user)

    def _chown_tree(self, top: Path, account: pwd.struct_passwd) -> None:
        os.chown(top, account.pw_uid, account.pw_gid)
        for folder, folders, files in os.walk(top):
            for entry in (*folders, *files):
                os.lchown(os.path.join(folder, entry), account.pw_uid, account.pw_gid)

    def _elasticsearch_yml(self) -> str:
        s = self.settings
        return "\n".join(
            [
                "cluster.name: stackstream-local",
                "node.name: stackstream-local",
                "discovery.type: single-node",
                f"network.host: {HOST}",
                f"http.port: {s.elasticsearch_port}",
                f"transport.port: {s.elasticsearch_transport_port}",
                f"path.data: {self.data_dir}",
                f"path.logs: {self.root / 'logs'}",
                "xpack.security.enabled: false",
                "cluster.routing.allocation.disk.threshold_enabled: false",
                "action.destructive_requires_name: false",
                "",
            ]
        )

    def prepare(self) -> Launch:
        archive = tools.artifact_file(
            self.settings.cache_dir,
            f"org.elasticsearch.distribution.integ-test-zip:elasticsearch:{self.version}:zip",
            f"elasticsearch-{self.version}.zip",
        )
        java_home = tools.java_home()
        account = self._ensure_user() if self.run_as else None
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.dir / ".unzip.lock"):
            if account is not None:
                for folder in (self.root.parent, self.root):
                    folder.mkdir(parents=True, exist_ok=True)
                    os.chmod(folder, 0o755)
                    os.chown(folder, account.pw_uid, account.pw_gid)
            stamp = self.home / ".stackstream-unpacked"
            if not stamp.is_file():
                shutil.rmtree(self.home, ignore_errors=True)
                tools.unzip(archive, self.root)
                stamp.write_text(f"{archive}\n")
            for folder in (self.data_dir, self.root / "logs", self.root / "tmp"):
                folder.mkdir(parents=True, exist_ok=True)
            config = self.home / "config"
            (config / "elasticsearch.yml").write_text(self._elasticsearch_yml())
            heap = self.settings.elasticsearch_heap
            (config / "jvm.options.d" / "stackstream.options").write_text(
                f"-Xms{heap}\n-Xmx{heap}\n"
            )
            if account is not None:
                self._chown_tree(self.root, account)
                link = self.dir / "home"
                if not link.is_symlink():
                    link.symlink_to(self.root)
        env = self.base_env()
        for variable in ("JAVA_HOME", "JAVA_OPTS", "ES_JAVA_OPTS", "ES_PATH_CONF"):
            env.pop(variable, None)
        env.update(
            {
                "ES_JAVA_HOME": str(java_home),
                "ES_TMPDIR": str(self.root / "tmp"),
                "HOME": str(self.root),
            }
        )
        if account is not None:
            env.update({"USER": account.pw_name, "LOGNAME": account.pw_name})
        return Launch(
            argv=[str(self.home / "bin" / "elasticsearch")],
            cwd=self.root,
            env=env,
            user=self.run_as,
        )

    def is_ready(self) -> bool:
        if not port_open(self.settings.elasticsearch_port):
            return False
        try:
            response = httpx.get(
                f"{self.address}/_cluster/health",
                params={"wait_for_status": "yellow", "timeout": "2s"},
                timeout=5,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("status") in {"green", "yellow"}
