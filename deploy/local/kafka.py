"""Apache Kafka in KRaft combined mode (broker and controller in one JVM) from Maven jars."""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from pathlib import Path

from deploy.local import tools
from deploy.local.errors import ServerStartError
from deploy.local.process import port_open
from deploy.local.server import Launch, Server

SLF4J_BINDING = "org.slf4j:slf4j-reload4j:1.7.36"
# slf4j-reload4j 1.7.36 pulls reload4j 1.2.19; the Kafka 3.9 distribution ships 1.2.25.
RELOAD4J = "ch.qos.reload4j:reload4j:1.2.25"
HOST = "127.0.0.1"

LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
"""

_client_logger = logging.getLogger("deploy.local.kafka.client")
_client_logger.addHandler(logging.NullHandler())
_client_logger.propagate = False


class Kafka(Server):
    """Kafka: format the KRaft storage once, then run kafka.Kafka with a generated config."""

    name = "kafka"

    @property
    def version(self) -> str:
        return self.settings.kafka_version

    @property
    def address(self) -> str:
        return f"{HOST}:{self.settings.kafka_port}"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def ports(self) -> list[int]:
        return [self.settings.kafka_port, self.settings.kafka_controller_port]

    def _properties(self) -> str:
        s = self.settings
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{HOST}:{s.kafka_controller_port}",
                f"listeners=PLAINTEXT://{HOST}:{s.kafka_port},CONTROLLER://{HOST}:{s.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://{HOST}:{s.kafka_port}",
                "inter.broker.listener.name=PLAINTEXT",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={self.data_dir}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=10",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "delete.topic.enable=true",
                "",
            ]
        )

    def _jvm_options(self) -> list[str]:
        heap = self.settings.kafka_heap
        return [
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.dir / 'logs'}",
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
        ]

    def prepare(self) -> Launch:
        lib = tools.runtime_classpath(
            self.settings.cache_dir,
            "kafka",
            self.version,
            [f"org.apache.kafka:kafka_2.13:{self.version}", SLF4J_BINDING, RELOAD4J],
        )
        java = str(tools.java())
        for folder in (self.dir, self.data_dir, self.dir / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        config = self.dir / "server.properties"
        config.write_text(self._properties())
        (self.dir / "log4j.properties").write_text(LOG4J_PROPERTIES)
        classpath = f"{lib}/*"
        if not (self.data_dir / "meta.properties").is_file():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            formatted = subprocess.run(
                [
                    java,
                    *self._jvm_options(),
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    "--ignore-formatted",
                ],
                capture_output=True,
                text=True,
                env=self.base_env(),
                timeout=180,
            )
            if formatted.returncode != 0:
                self.log_file.write_text(formatted.stdout + formatted.stderr)
                raise ServerStartError(
                    self.name,
                    f"kafka.tools.StorageTool format failed (exit {formatted.returncode})",
                    self.log_file,
                    (formatted.stdout + formatted.stderr)[-3000:],
                )
        return Launch(
            argv=[java, *self._jvm_options(), "-cp", classpath, "kafka.Kafka", str(config)],
            cwd=self.dir,
            env=self.base_env(),
        )

    def is_ready(self) -> bool:
        if not port_open(self.settings.kafka_port):
            return False
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.address, "logger": _client_logger})
        try:
            metadata = admin.list_topics(timeout=5)
        except KafkaException:
            return False
        return bool(metadata.brokers)
