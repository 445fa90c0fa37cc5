"""Outbound requests refuse private and loopback addresses at connect time unless the receiver is internal."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from control.webhooks import sender
from control.webhooks.addresses import InvalidURL, check_url
from control.webhooks.events import emit
from control.webhooks.models import Attempt, Delivery, Receiver
from tests.webhooks.conftest import LocalReceiver

pytestmark = pytest.mark.django_db


def deliver_to(url: str, internal: bool = False) -> Delivery:
    Receiver.objects.create(name="r", url=url, secret="x" * 20, events=["alert"], internal=internal)
    [d] = emit("alert", {"alerts": []})
    sender.deliver(d.pk)
    d.refresh_from_db()
    return d


def test_a_hostname_resolving_to_loopback_is_refused_and_nothing_is_sent(receiver: LocalReceiver) -> None:
    d = deliver_to(f"http://localhost:{receiver.port}/hook")
    assert d.state == "failed" and d.attempts == 1
    assert "refused to connect to 127.0.0.1 (localhost resolves to it): it is a loopback address" in d.last_error \
        or "refused to connect to ::1 (localhost resolves to it)" in d.last_error
    assert receiver.requests == []
    assert Attempt.objects.get(delivery=d).status is None


def test_the_same_receiver_marked_internal_gets_through(receiver: LocalReceiver) -> None:
    d = deliver_to(f"http://localhost:{receiver.port}/hook", internal=True)
    assert d.state == "done" and len(receiver.requests) == 1


@pytest.mark.parametrize(("host", "kind"), [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.10", "private"), ("172.16.5.5", "private"),
    ("169.254.169.254", "link-local"), ("[::1]", "loopback"), ("[::ffff:127.0.0.1]", "loopback"),
    ("[fd00::1]", "private"), ("100.64.0.1", "not a public address"), ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
])
def test_literal_private_addresses_are_refused(host: str, kind: str) -> None:
    d = deliver_to(f"http://{host}:9/hook")
    assert d.state == "failed" and "refused to connect" in d.last_error and kind in d.last_error


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kw: Any) -> list[Any]:
        if host == "hooks.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port))) for ip in answers]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_public_name_that_resolves_to_loopback_at_connect_time_is_refused(
        monkeypatch: pytest.MonkeyPatch, receiver: LocalReceiver) -> None:
    # DNS rebinding: the URL looks public when saved; the address is what counts when connecting.
    fake_dns(monkeypatch, ["127.0.0.1"])
    d = deliver_to(f"http://hooks.example.com:{receiver.port}/hook")
    assert d.state == "failed" and "127.0.0.1 (hooks.example.com resolves to it)" in d.last_error
    assert receiver.requests == []


def test_a_name_with_one_public_and_one_private_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, ["93.184.216.34", "10.0.0.7"])
    d = deliver_to("http://hooks.example.com/hook")
    assert d.state == "failed" and "10.0.0.7" in d.last_error


def test_callbacks_are_never_internal(receiver: LocalReceiver) -> None:
    d = sender.send_callback(f"http://127.0.0.1:{receiver.port}/done", "job", {"job": "1"})
    assert sender.deliver(d.pk) == "failed"
    assert receiver.requests == []


@pytest.mark.parametrize(("url", "message"), [
    ("http://user:pw@hooks.example.com/", "credentials in the URL are not allowed"),
    ("http://token@hooks.example.com/", "credentials in the URL are not allowed"),
    ("ftp://hooks.example.com/", "scheme 'ftp' is not allowed"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("javascript:alert(1)", "scheme 'javascript' is not allowed"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme 'gopher' is not allowed"),
    ("http:///path-only", "no host"),
    ("http://hooks.example.com/a b", "spaces or control characters"),
    ("http://hooks.example.com:99999/", "not a valid URL"),
    ("https://hooks.example.com/" + "a" * 2000, "longer than 2000"),
    ("", "a URL is required"),
])
def test_unusable_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(InvalidURL, match=message):
        check_url(url)
    with pytest.raises(InvalidURL):
        sender.send_callback(url, "job", {})
    assert Delivery.objects.count() == 0
