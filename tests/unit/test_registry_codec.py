"""Eureka wire documents: JSON and XML in, the same shapes out, quirks included."""

from __future__ import annotations

import json
from xml.etree.ElementTree import fromstring

import pytest

from streams.sdk.eureka import (
    DocumentError,
    applications_from_json,
    instance_to_wire,
    parse_register_body,
    render_application,
    render_applications,
    render_instance,
)

SPRING_JSON = (
    '{"instance":{"instanceId":"192.0.2.10:orders:8080","hostName":"orders-1","app":"ORDERS",'
    '"ipAddr":"192.0.2.10","status":"UP","overriddenStatus":"UNKNOWN",'
    '"port":{"$":8080,"@enabled":"true"},"securePort":{"$":443,"@enabled":"false"},'
    '"countryId":1,"dataCenterInfo":{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",'
    '"name":"MyOwn"},"leaseInfo":{"renewalIntervalInSecs":30,"durationInSecs":90,'
    '"registrationTimestamp":1700000000000,"lastRenewalTimestamp":1700000030000,'
    '"evictionTimestamp":0,"serviceUpTimestamp":1700000000000},'
    '"metadata":{"management.port":"8080","zone":"z1"},"homePageUrl":"http://orders-1:8080/",'
    '"statusPageUrl":"http://orders-1:8080/info","healthCheckUrl":"http://orders-1:8080/health",'
    '"vipAddress":"orders","secureVipAddress":"orders","isCoordinatingDiscoveryServer":"false",'
    '"lastUpdatedTimestamp":"1700000000000","lastDirtyTimestamp":"1700000000000",'
    '"actionType":"ADDED"}}'
)
SPRING_XML = (
    "<instance><instanceId>192.0.2.10:orders:8080</instanceId><hostName>orders-1</hostName>"
    "<app>ORDERS</app><ipAddr>192.0.2.10</ipAddr><status>UP</status>"
    '<overriddenstatus>UNKNOWN</overriddenstatus><port enabled="true">8080</port>'
    '<securePort enabled="false">443</securePort><countryId>1</countryId>'
    '<dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo">'
    "<name>MyOwn</name></dataCenterInfo><leaseInfo><renewalIntervalInSecs>30</renewalIntervalInSecs>"
    "<durationInSecs>90</durationInSecs><registrationTimestamp>1700000000000</registrationTimestamp>"
    "<lastRenewalTimestamp>1700000030000</lastRenewalTimestamp><evictionTimestamp>0</evictionTimestamp>"
    "<serviceUpTimestamp>1700000000000</serviceUpTimestamp></leaseInfo>"
    "<metadata><management.port>8080</management.port><zone>z1</zone></metadata>"
    "<homePageUrl>http://orders-1:8080/</homePageUrl><statusPageUrl>http://orders-1:8080/info</statusPageUrl>"
    "<healthCheckUrl>http://orders-1:8080/health</healthCheckUrl><vipAddress>orders</vipAddress>"
    "<secureVipAddress>orders</secureVipAddress>"
    "<isCoordinatingDiscoveryServer>false</isCoordinatingDiscoveryServer>"
    "<lastUpdatedTimestamp>1700000000000</lastUpdatedTimestamp>"
    "<lastDirtyTimestamp>1700000000000</lastDirtyTimestamp><actionType>ADDED</actionType></instance>"
)


def test_a_spring_style_json_body_round_trips_byte_for_byte() -> None:
    record = parse_register_body(SPRING_JSON.encode(), "application/json")
    assert record["port"] == 8080 and record["port_enabled"] is True
    assert record["secure_port_enabled"] is False
    assert record["data_center_info"]["name"] == "MyOwn"
    assert record["last_dirty_timestamp_ms"] == 1_700_000_000_000
    assert render_instance(record, as_json=True).decode() == SPRING_JSON


def test_a_spring_style_xml_body_round_trips_byte_for_byte() -> None:
    record = parse_register_body(SPRING_XML.encode(), "application/xml")
    assert record == parse_register_body(SPRING_JSON.encode(), "application/json")
    assert render_instance(record, as_json=False).decode() == SPRING_XML


def test_quirky_inputs_are_accepted() -> None:
    body = json.loads(SPRING_JSON)
    doc = body["instance"]
    doc["port"] = {"$": "8081", "@enabled": "false"}
    doc.pop("overriddenStatus")
    doc["overriddenstatus"] = "OUT_OF_SERVICE"
    doc["metadata"] = {"@class": "java.util.Collections$EmptyMap"}
    doc["app"] = "orders"
    record = parse_register_body(json.dumps(body).encode(), "application/json; charset=utf-8")
    assert (record["port"], record["port_enabled"]) == (8081, False)
    assert record["overridden_status"] == "OUT_OF_SERVICE"
    assert record["metadata"] == {} and record["app"] == "ORDERS"
    wire = instance_to_wire(record)
    assert wire["metadata"] == {"@class": "java.util.Collections$EmptyMap"}
    xml = render_instance(record, as_json=False).decode()
    assert '<metadata class="java.util.Collections$EmptyMap"/>' in xml


def test_amazon_data_center_metadata_and_sid_are_kept() -> None:
    body = json.loads(SPRING_JSON)
    body["instance"]["dataCenterInfo"] = {
        "@class": "com.netflix.appinfo.AmazonInfo",
        "name": "Amazon",
        "metadata": {"instance-id": "i-1", "availability-zone": "us-east-1a"},
    }
    body["instance"]["sid"] = "7"
    record = parse_register_body(json.dumps(body).encode(), "application/json")
    wire = instance_to_wire(record)
    assert wire["dataCenterInfo"]["metadata"]["availability-zone"] == "us-east-1a"
    assert wire["sid"] == "7"
    element = fromstring(render_instance(record, as_json=False))
    assert element.find("dataCenterInfo/metadata/instance-id").text == "i-1"


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b"", "application/json", "instance"),
        (b"{not json", "application/json", "instance"),
        (b'{"instances": {}}', "application/json", "instance"),
        (b"<instance><port>", "application/xml", "instance"),
        (b"<application/>", "application/xml", "instance"),
        (b'{"instance": {"port": {"$": "eighty"}}}', "application/json", "port"),
        (b'{"instance": {"leaseInfo": []}}', "application/json", "leaseInfo"),
        (
            b'<!DOCTYPE x [<!ENTITY a "aaaa">]><instance><app>&a;</app></instance>',
            "application/xml",
            "instance",
        ),
    ],
)
def test_malformed_bodies_raise_a_document_error_naming_the_field(
    body: bytes, content_type: str, field: str
) -> None:
    with pytest.raises(DocumentError) as raised:
        parse_register_body(body, content_type)
    assert raised.value.field == field


def test_envelopes_have_eurekas_shapes_in_json_and_xml() -> None:
    record = parse_register_body(SPRING_JSON.encode(), "application/json")
    other = {**record, "instance_id": "b", "status": "DOWN"}
    body = json.loads(render_applications([other, record], "1", "DOWN_1_UP_1_", as_json=True))
    envelope = body["applications"]
    assert envelope["versions__delta"] == "1" and envelope["apps__hashcode"] == "DOWN_1_UP_1_"
    assert [i["instanceId"] for i in envelope["application"][0]["instance"]] == [
        "192.0.2.10:orders:8080",
        "b",
    ]
    parsed = applications_from_json(body)
    assert [i["instance_id"] for i in parsed["instances"]] == ["192.0.2.10:orders:8080", "b"]
    root = fromstring(render_applications([record], "3", "UP_1_", as_json=False))
    assert [child.tag for child in root][:3] == ["versions__delta", "apps__hashcode", "application"]
    assert root.find("application/name").text == "ORDERS"
    assert (
        fromstring(render_applications([], "1", "", as_json=False)).find("apps__hashcode").text
        is None
    )
    one = json.loads(render_application("ORDERS", [record], as_json=True))
    assert one["application"]["name"] == "ORDERS" and len(one["application"]["instance"]) == 1


def test_legacy_single_object_envelopes_are_tolerated() -> None:
    instance = json.loads(SPRING_JSON)["instance"]
    legacy = {"applications": {"application": {"name": "ORDERS", "instance": instance}}}
    assert len(applications_from_json(legacy)["instances"]) == 1
