"""Eureka's wire documents in JSON and XML, to and from `InstanceInfo` records.

Pure (standard library and defusedxml only). It lives in the SDK so that applications read the
registry's answers with the same code the worker (`streams.registry.api`) writes them with,
without importing a worker module (DESIGN rule 10). Records use the Avro field names of
`stackstream.registry.InstanceInfo`; the wire uses Eureka's names and quirks (port `$` and
`@enabled`, `dataCenterInfo` `@class`, `overriddenStatus`/`overriddenstatus`, string scalars,
`java.util.Collections$EmptyMap` for empty metadata).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from xml.etree.ElementTree import Element, ParseError, SubElement, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as parse_xml

from streams.errors import StackstreamError

DEFAULT_DATA_CENTER_CLASS = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"
AMAZON_DATA_CENTER_CLASS = "com.netflix.appinfo.AmazonInfo"
EMPTY_MAP_CLASS = "java.util.Collections$EmptyMap"
JSON_TYPE = "application/json"
XML_TYPE = "application/xml"


class DocumentError(StackstreamError):
    """A register body that is not a readable Eureka instance document."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


# --- reading ---------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _integer(value: Any, field: str, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise DocumentError(field, f"{field} must be a number, not {value!r}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise DocumentError(field, f"{field} must be a number, not {value!r}") from None


def _boolean(value: Any, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def _string_map(value: Any, field: str) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if not isinstance(value, Mapping):
        raise DocumentError(field, f"{field} must be an object of strings")
    return {str(k): "" if v is None else str(v) for k, v in value.items() if k != "@class"}


def instance_from_wire(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An `InstanceInfo` record from the JSON-shaped instance object (XML is converted first).

    Missing required fields become empty strings or None so that `model.validate_instance`
    can answer with Eureka's own 400 reasons.
    """
    if not isinstance(doc, Mapping):
        raise DocumentError("instance", "the instance must be an object")

    def port(name: str, default: int, enabled_default: bool) -> tuple[int, bool]:
        value = doc.get(name)
        if isinstance(value, Mapping):
            return (
                _integer(value.get("$"), name, default),
                _boolean(value.get("@enabled"), enabled_default),
            )
        return _integer(value, name, default), enabled_default

    port_number, port_enabled = port("port", 7001, True)
    secure_number, secure_enabled = port("securePort", 7002, False)
    data_center = doc.get("dataCenterInfo")
    lease = doc.get("leaseInfo")
    lease = {} if lease is None or lease == "" else lease
    if not isinstance(lease, Mapping):
        raise DocumentError("leaseInfo", "leaseInfo must be an object")
    overridden = doc.get("overriddenStatus", doc.get("overriddenstatus"))
    record: dict[str, Any] = {
        "instance_id": _text(doc.get("instanceId")) or "",
        "host_name": _text(doc.get("hostName")) or "",
        "app": (_text(doc.get("app")) or "").upper(),
        "app_group_name": _text(doc.get("appGroupName")),
        "ip_addr": _text(doc.get("ipAddr")) or "",
        "sid": _text(doc.get("sid")),
        "status": (_text(doc.get("status")) or "UP").upper(),
        "overridden_status": (_text(overridden) or "UNKNOWN").upper(),
        "port": port_number,
        "port_enabled": port_enabled,
        "secure_port": secure_number,
        "secure_port_enabled": secure_enabled,
        "country_id": _integer(doc.get("countryId"), "countryId", 1),
        "data_center_info": None,
        "lease_info": {
            "renewal_interval_s": _integer(
                lease.get("renewalIntervalInSecs"), "leaseInfo.renewalIntervalInSecs", 30
            ),
            "duration_s": _integer(lease.get("durationInSecs"), "leaseInfo.durationInSecs", 90),
            "registration_timestamp_ms": _integer(
                lease.get("registrationTimestamp"), "leaseInfo.registrationTimestamp", 0
            ),
            "last_renewal_timestamp_ms": _integer(
                lease.get("lastRenewalTimestamp"), "leaseInfo.lastRenewalTimestamp", 0
            ),
            "eviction_timestamp_ms": _integer(
                lease.get("evictionTimestamp"), "leaseInfo.evictionTimestamp", 0
            ),
            "service_up_timestamp_ms": _integer(
                lease.get("serviceUpTimestamp"), "leaseInfo.serviceUpTimestamp", 0
            ),
        },
        "metadata": _string_map(doc.get("metadata"), "metadata"),
        "home_page_url": _text(doc.get("homePageUrl")),
        "status_page_url": _text(doc.get("statusPageUrl")),
        "health_check_url": _text(doc.get("healthCheckUrl")),
        "secure_health_check_url": _text(doc.get("secureHealthCheckUrl")),
        "vip_address": _text(doc.get("vipAddress")),
        "secure_vip_address": _text(doc.get("secureVipAddress")),
        "is_coordinating_discovery_server": _boolean(
            doc.get("isCoordinatingDiscoveryServer"), False
        ),
        "last_updated_timestamp_ms": _integer(
            doc.get("lastUpdatedTimestamp"), "lastUpdatedTimestamp", 0
        ),
        "last_dirty_timestamp_ms": _integer(doc.get("lastDirtyTimestamp"), "lastDirtyTimestamp", 0),
        "action_type": _text(doc.get("actionType")),
        "asg_name": _text(doc.get("asgName")),
    }
    if isinstance(data_center, Mapping):
        record["data_center_info"] = {
            "name": _text(data_center.get("name")) or "",
            "class_name": _text(data_center.get("@class")) or DEFAULT_DATA_CENTER_CLASS,
            "metadata": _string_map(data_center.get("metadata"), "dataCenterInfo.metadata"),
        }
    elif data_center is not None:
        raise DocumentError("dataCenterInfo", "dataCenterInfo must be an object")
    return record


def parse_register_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The `InstanceInfo` record in a register body, JSON or XML (chosen by Content-Type)."""
    text = body.decode("utf-8", errors="strict") if body else ""
    if not text.strip():
        raise DocumentError("instance", "empty request body")
    if "xml" in content_type.lower() or (not content_type and text.lstrip().startswith("<")):
        return instance_from_wire(_instance_object_from_xml(text))
    try:
        document = json.loads(text)
    except ValueError as error:
        raise DocumentError("instance", f"malformed JSON: {error}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("instance"), Mapping):
        raise DocumentError("instance", 'the body must be {"instance": {...}}')
    return instance_from_wire(document["instance"])


def _instance_object_from_xml(text: str) -> dict[str, Any]:
    try:
        root = parse_xml(text)
    except (ParseError, DefusedXmlException) as error:
        raise DocumentError("instance", f"malformed XML: {error}") from None
    if root.tag != "instance":
        raise DocumentError("instance", f"the XML root must be <instance>, not <{root.tag}>")
    return _xml_instance(root)


def _xml_map(element: Element) -> dict[str, str]:
    return {child.tag: child.text or "" for child in element}


def _xml_instance(root: Element) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for child in root:
        tag = child.tag
        if tag in ("port", "securePort"):
            document[tag] = {"$": (child.text or "").strip(), "@enabled": child.get("enabled")}
        elif tag == "dataCenterInfo":
            center: dict[str, Any] = {"@class": child.get("class")}
            for part in child:
                center[part.tag] = _xml_map(part) if part.tag == "metadata" else part.text
            document[tag] = center
        elif tag in ("leaseInfo", "metadata"):
            document[tag] = _xml_map(child)
        else:
            document[tag] = child.text
    return document


def applications_from_json(document: Mapping[str, Any]) -> dict[str, Any]:
    """`{versions_delta, apps_hashcode, instances: [record]}` from a JSON `applications` body.

    Tolerates the legacy shape where one application or instance is a bare object.
    """
    envelope = document.get("applications") or {}
    apps = envelope.get("application") or []
    if isinstance(apps, Mapping):
        apps = [apps]
    instances: list[dict[str, Any]] = []
    for app in apps:
        members = app.get("instance") or []
        if isinstance(members, Mapping):
            members = [members]
        instances.extend(instance_from_wire(member) for member in members)
    return {
        "versions_delta": str(envelope.get("versions__delta", "")),
        "apps_hashcode": str(envelope.get("apps__hashcode", "")),
        "instances": instances,
    }


# --- writing ---------------------------------------------------------------------------------


def _metadata_out(metadata: Mapping[str, str]) -> dict[str, str]:
    return dict(metadata) if metadata else {"@class": EMPTY_MAP_CLASS}


def instance_to_wire(record: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON instance object Eureka's Jackson codec writes, in its field order."""
    lease = record["lease_info"]
    center = record["data_center_info"]
    center_out: dict[str, Any] = {"@class": center["class_name"], "name": center["name"]}
    if center.get("metadata"):
        center_out["metadata"] = dict(center["metadata"])
    doc: dict[str, Any] = {
        "instanceId": record["instance_id"],
        "hostName": record["host_name"],
        "app": record["app"],
        "ipAddr": record["ip_addr"],
    }
    if record.get("sid"):
        doc["sid"] = record["sid"]
    doc.update(
        {
            "status": record["status"],
            "overriddenStatus": record["overridden_status"],
            "port": {"$": record["port"], "@enabled": _text(record["port_enabled"])},
            "securePort": {
                "$": record["secure_port"],
                "@enabled": _text(record["secure_port_enabled"]),
            },
            "countryId": record["country_id"],
            "dataCenterInfo": center_out,
            "leaseInfo": {
                "renewalIntervalInSecs": lease["renewal_interval_s"],
                "durationInSecs": lease["duration_s"],
                "registrationTimestamp": lease["registration_timestamp_ms"],
                "lastRenewalTimestamp": lease["last_renewal_timestamp_ms"],
                "evictionTimestamp": lease["eviction_timestamp_ms"],
                "serviceUpTimestamp": lease["service_up_timestamp_ms"],
            },
            "metadata": _metadata_out(record["metadata"]),
        }
    )
    optional = (
        ("appGroupName", "app_group_name"),
        ("homePageUrl", "home_page_url"),
        ("statusPageUrl", "status_page_url"),
        ("healthCheckUrl", "health_check_url"),
        ("secureHealthCheckUrl", "secure_health_check_url"),
        ("vipAddress", "vip_address"),
        ("secureVipAddress", "secure_vip_address"),
    )
    for wire, field in optional:
        if record.get(field) is not None:
            doc[wire] = record[field]
    doc["isCoordinatingDiscoveryServer"] = _text(record["is_coordinating_discovery_server"])
    doc["lastUpdatedTimestamp"] = str(record["last_updated_timestamp_ms"])
    doc["lastDirtyTimestamp"] = str(record["last_dirty_timestamp_ms"])
    if record.get("action_type") is not None:
        doc["actionType"] = record["action_type"]
    if record.get("asg_name") is not None:
        doc["asgName"] = record["asg_name"]
    return doc


def _xml_scalar(parent: Element, tag: str, value: Any) -> Element:
    element = SubElement(parent, tag)
    element.text = _text(value)
    return element


def _xml_instance_element(parent: Element | None, record: Mapping[str, Any]) -> Element:
    doc = instance_to_wire(record)
    element = Element("instance") if parent is None else SubElement(parent, "instance")
    for key, value in doc.items():
        if key == "overriddenStatus":
            _xml_scalar(element, "overriddenstatus", value)
        elif key in ("port", "securePort"):
            port = _xml_scalar(element, key, value["$"])
            port.set("enabled", value["@enabled"])
        elif key == "dataCenterInfo":
            center = SubElement(element, key)
            center.set("class", value["@class"])
            _xml_scalar(center, "name", value["name"])
            if "metadata" in value:
                meta = SubElement(center, "metadata")
                for name, text in value["metadata"].items():
                    _xml_scalar(meta, name, text)
        elif key == "leaseInfo":
            lease = SubElement(element, key)
            for name, number in value.items():
                _xml_scalar(lease, name, number)
        elif key == "metadata":
            meta = SubElement(element, key)
            if "@class" in value:
                meta.set("class", value["@class"])
            else:
                for name, text in value.items():
                    _xml_scalar(meta, name, text)
        else:
            _xml_scalar(element, key, value)
    return element


def _group_by_app(records: Iterable[Mapping[str, Any]]) -> list[tuple[str, list]]:
    apps: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        apps.setdefault(record["app"], []).append(record)
    return [(name, sorted(apps[name], key=lambda r: r["instance_id"])) for name in sorted(apps)]


def _xml_bytes(root: Element) -> bytes:
    # ElementTree writes empty elements as `<a />`; Eureka's writers emit `<a/>`.
    return tostring(root, encoding="unicode").replace(" />", "/>").encode()


def render_instance(record: Mapping[str, Any], as_json: bool) -> bytes:
    """One instance document (root `instance`)."""
    if as_json:
        return json.dumps({"instance": instance_to_wire(record)}, separators=(",", ":")).encode()
    return _xml_bytes(_xml_instance_element(None, record))


def render_application(name: str, records: Iterable[Mapping[str, Any]], as_json: bool) -> bytes:
    """One application document (root `application`)."""
    members = sorted(records, key=lambda r: r["instance_id"])
    if as_json:
        body = {"application": {"name": name, "instance": [instance_to_wire(r) for r in members]}}
        return json.dumps(body, separators=(",", ":")).encode()
    root = Element("application")
    _xml_scalar(root, "name", name)
    for record in members:
        _xml_instance_element(root, record)
    return _xml_bytes(root)


def render_applications(
    records: Iterable[Mapping[str, Any]], versions_delta: str, apps_hashcode: str, as_json: bool
) -> bytes:
    """The `applications` envelope of full, delta and VIP answers."""
    grouped = _group_by_app(records)
    if as_json:
        body = {
            "applications": {
                "versions__delta": versions_delta,
                "apps__hashcode": apps_hashcode,
                "application": [
                    {"name": name, "instance": [instance_to_wire(r) for r in members]}
                    for name, members in grouped
                ],
            }
        }
        return json.dumps(body, separators=(",", ":")).encode()
    root = Element("applications")
    _xml_scalar(root, "versions__delta", versions_delta)
    _xml_scalar(root, "apps__hashcode", apps_hashcode)
    for name, members in grouped:
        app = SubElement(root, "application")
        _xml_scalar(app, "name", name)
        for record in members:
            _xml_instance_element(app, record)
    return _xml_bytes(root)
