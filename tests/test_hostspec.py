"""HostSpec: parsing ``[ssh://][user@]host[:port]/num_workers``."""

from __future__ import annotations

import pytest

from distex_zmq import HostSpec, Pool
from distex_zmq.hostspec import DEFAULT_SPAWNER_PORT, parse_hosts

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    "spec, is_ssh, user, host, port, num_workers",
    [
        ("ssh://user@maxi:10022/8", True, "user", "maxi", 10022, 8),
        ("ssh://maxi/4", True, None, "maxi", None, 4),
        ("ssh://me@10.0.0.7/1", True, "me", "10.0.0.7", None, 1),
        ("ssh://host.example.com:22/16", True, None, "host.example.com", 22, 16),
        ("SSH://maxi/8", True, None, "maxi", None, 8),  # a scheme is case-insensitive
        ("mini/2", False, None, "mini", DEFAULT_SPAWNER_PORT, 2),
        ("mini:9000/3", False, None, "mini", 9000, 3),
        ("bob@mini/5", False, "bob", "mini", DEFAULT_SPAWNER_PORT, 5),
        ("bob@mini:1/5", False, "bob", "mini", 1, 5),
        ("localhost:65535/100", False, None, "localhost", 65535, 100),
        ("a.b@c/1", False, "a.b", "c", DEFAULT_SPAWNER_PORT, 1),
    ],
)
def test_good_specs(spec, is_ssh, user, host, port, num_workers):
    h = HostSpec(spec)
    assert (h.is_ssh, h.user, h.host, h.port, h.num_workers) == (
        is_ssh,
        user,
        host,
        port,
        num_workers,
    )


def test_default_spawner_port_is_that_of_distex():
    assert DEFAULT_SPAWNER_PORT == 8899


@pytest.mark.parametrize(
    "spec", ["ssh://user@maxi:10022/8", "ssh://maxi/4", "mini/2", "bob@mini:9000/3"]
)
def test_repr_round_trips(spec):
    h = HostSpec(spec)
    assert eval(repr(h), {"HostSpec": HostSpec}) == h  # noqa: S307
    assert hash(eval(repr(h), {"HostSpec": HostSpec})) == hash(h)  # noqa: S307


def test_equality_and_hash():
    assert HostSpec("mini/2") == HostSpec("mini:8899/2")
    assert HostSpec("mini/2") != HostSpec("mini/3")
    assert HostSpec("ssh://mini/2") != HostSpec("mini/2")
    assert len({HostSpec("mini/2"), HostSpec("mini:8899/2"), HostSpec("maxi/2")}) == 2
    assert HostSpec("mini/2") != "mini/2"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mini", "lacks the number of workers"),
        ("ssh://mini", "lacks the number of workers"),
        ("", "lacks the number of workers"),
        ("mini/", "is not an integer"),
        ("mini/two", "'two' is not an integer"),
        ("mini/2.5", "is not an integer"),
        ("mini/0", "must be >= 1"),
        ("mini/-3", "must be >= 1"),
        ("@mini/2", "empty user name"),
        ("ssh://@mini/2", "empty user name"),
        ("/2", "missing or bad host name"),
        ("ssh:///2", "missing or bad host name"),
        ("user@/2", "missing or bad host name"),
        (":22/2", "missing or bad host name"),
        ("mini/2/3", "a '/' in the address"),
        ("ssh:/maxi/8", "a '/' in the address; write ssh://"),
        ("tcp://maxi:9000/8", "unknown scheme 'tcp://'; write ssh://"),
        ("spawner://maxi/8", "unknown scheme 'spawner://'"),
        ("[::1]:9000/2", "IPv6 addresses are not supported"),
        ("ma xi/2", "missing or bad host name"),
        ("maxi/2_0", "'2_0' is not an integer"),
        ("maxi/ 2", "' 2' is not an integer"),
        ("maxi: 9000/2", "bad port ' 9000'"),
        ("maxi:+9000/2", "bad port '+9000'"),
        ("mini:abc/2", "bad port 'abc'"),
        ("mini:/2", "bad port"),
        ("mini:0/2", "port out of range"),
        ("mini:65536/2", "port out of range"),
        ("mini:-1/2", "bad port '-1'"),
        # it said "a '/' in the address"
        ("mini/2,maxi/4", "names several hosts: give them as a list, ['mini/2', 'maxi/4']"),
        ("mini/2, ssh://maxi/4", "give them as a list, ['mini/2', 'ssh://maxi/4']"),
        ("mini/2 maxi/4", "give them as a list, ['mini/2', 'maxi/4']"),
    ],
)
def test_bad_specs_raise_value_error_with_a_clear_message(spec, message):
    with pytest.raises(ValueError) as info:
        HostSpec(spec)
    text = str(info.value)
    assert message in text
    assert repr(spec) in text, "the message must quote the bad spec"


def test_the_missing_count_message_shows_the_format():
    with pytest.raises(ValueError, match=r"ssh://\[user@\]host\[:port\]/N for an SSH host, host"):
        HostSpec("mini")


@pytest.mark.parametrize("spec", [None, 5, b"mini/2", ["mini/2"]])
def test_non_strings_raise_type_error(spec):
    with pytest.raises(TypeError, match="must be a string"):
        HostSpec(spec)


@pytest.mark.parametrize("hosts", [3, 2.5, object()])
def test_hosts_that_are_neither_a_spec_nor_a_list_of_them_say_so(hosts):
    # as Pool(hosts=...) and add_hosts read them, before any process starts
    with pytest.raises(TypeError, match=r"hosts must be a host specification .* or a list"):
        parse_hosts(hosts)
    with pytest.raises(TypeError, match="hosts must be a host specification"):
        Pool(1, hosts=hosts)


def test_hosts_as_one_spec_or_any_iterable_of_them():
    assert [str(s) for s in parse_hosts("mini/2")] == [str(HostSpec("mini/2"))]
    specs = parse_hosts(h for h in ["mini/2", "ssh://maxi/8"])
    assert [(s.host, s.num_workers, s.is_ssh) for s in specs] == [
        ("mini", 2, False),
        ("maxi", 8, True),
    ]
    with pytest.raises(TypeError, match="must be a string, not 5"):
        parse_hosts(["mini/2", 5])


def test_a_user_on_a_spawner_host_is_refused_by_a_pool():
    # parsed (distex's form), but a spawner runs its workers as its own
    # user: a pool given one would run them as someone else than it says
    assert HostSpec("bob@mini/5").user == "bob"
    with pytest.raises(ValueError, match=r"a user applies to SSH hosts only .*ssh://bob@mini/5"):
        parse_hosts(["ssh://bob@maxi/1", "bob@mini/5"])
    with pytest.raises(ValueError, match=r"write mini:9000/3"):
        Pool(None, hosts="bob@mini:9000/3")
