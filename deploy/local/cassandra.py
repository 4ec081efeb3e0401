"""Apache Cassandra 5.0 from the cassandra-all jars, started as CassandraDaemon on Java 17.

This replaces bin/cassandra, cassandra-env.sh and conf/jvm17-server.options, none of which are
in the jars: the JVM flags below are the ones those files set, minus AlwaysPreTouch and JMX.
"""

from __future__ import annotations

from pathlib import Path

from deploy.local import tools
from deploy.local.process import port_open
from deploy.local.server import Launch, Server

HOST = "127.0.0.1"
DATACENTER = "datacenter1"

JAVA17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]

LOGBACK_XML = """\
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.thinkaurelius.thrift" level="ERROR"/>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


class Cassandra(Server):
    """Cassandra: one node, one token, generated cassandra.yaml and logback.xml."""

    name = "cassandra"
    stop_grace_seconds = 60.0

    @property
    def version(self) -> str:
        return self.settings.cassandra_version

    @property
    def address(self) -> str:
        return f"{HOST}:{self.settings.cassandra_port}"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def ports(self) -> list[int]:
        return [self.settings.cassandra_port, self.settings.cassandra_storage_port]

    def _yaml(self) -> str:
        s = self.settings
        data = self.data_dir
        return "\n".join(
            [
                "cluster_name: stackstream-local",
                "num_tokens: 1",
                "initial_token: 0",
                "partitioner: org.apache.cassandra.dht.Murmur3Partitioner",
                "endpoint_snitch: SimpleSnitch",
                "seed_provider:",
                "  - class_name: org.apache.cassandra.locator.SimpleSeedProvider",
                "    parameters:",
                f'      - seeds: "{HOST}:{s.cassandra_storage_port}"',
                f"listen_address: {HOST}",
                f"rpc_address: {HOST}",
                f"storage_port: {s.cassandra_storage_port}",
                f"native_transport_port: {s.cassandra_port}",
                "start_native_transport: true",
                f"data_file_directories: [{data / 'data'}]",
                f"commitlog_directory: {data / 'commitlog'}",
                f"saved_caches_directory: {data / 'saved_caches'}",
                f"hints_directory: {data / 'hints'}",
                f"cdc_raw_directory: {data / 'cdc_raw'}",
                "commitlog_sync: periodic",
                "commitlog_sync_period: 10000ms",
                "auto_snapshot: false",
                "concurrent_compactors: 1",
                "file_cache_size: 64MiB",
                "key_cache_size: 16MiB",
                "authenticator: AllowAllAuthenticator",
                "authorizer: AllowAllAuthorizer",
                "",
            ]
        )

    def prepare(self) -> Launch:
        lib = tools.runtime_classpath(
            self.settings.cache_dir,
            "cassandra",
            self.version,
            [f"org.apache.cassandra:cassandra-all:{self.version}"],
        )
        java = str(tools.java())
        conf = self.dir / "conf"
        for folder in (conf, self.data_dir, self.dir / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        (conf / "cassandra.yaml").write_text(self._yaml())
        (conf / "logback.xml").write_text(LOGBACK_XML)
        jamm = sorted(lib.glob("jamm-*.jar"))
        agent = [f"-javaagent:{jamm[-1]}"] if jamm else []
        heap = self.settings.cassandra_heap
        argv = [
            java,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-Xss256k",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=300",
            "-XX:+ParallelRefProcEnabled",
            "-XX:+HeapDumpOnOutOfMemoryError",
            "-XX:+CrashOnOutOfMemoryError",
            "-ea",
            "-da:net.openhft...",
            "-Djava.net.preferIPv4Stack=true",
            *JAVA17_FLAGS,
            *agent,
            f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.storagedir={self.data_dir}",
            f"-Dcassandra.logdir={self.dir / 'logs'}",
            f"-Dlogback.configurationFile={conf / 'logback.xml'}",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.initial_token=0",
            "-cp",
            f"{lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        return Launch(argv=argv, cwd=self.dir, env=self.base_env())

    def is_ready(self) -> bool:
        if not port_open(self.settings.cassandra_port):
            return False
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import DCAwareRoundRobinPolicy

        profile = ExecutionProfile(
            load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=DATACENTER)
        )
        cluster = Cluster(
            [HOST],
            port=self.settings.cassandra_port,
            protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=5,
            control_connection_timeout=5,
        )
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local", timeout=5).one()
            return row is not None
        except Exception:
            return False
        finally:
            cluster.shutdown()
