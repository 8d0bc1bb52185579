"""The WebSocket URL's query string: create, join and resume requests, and every refusal."""

from __future__ import annotations

import pytest

from nexus_actors.errors import Code, Refusal
from nexus_actors.protocol.connect import (
    CODE_ALPHABET,
    CreateRoom,
    JoinRoom,
    OpenRequest,
    ResumeSeat,
    parse_connect,
)


def parse(target: str, max_name_length: int = 50) -> OpenRequest:
    return parse_connect(target, max_name_length=max_name_length)


def refused(target: str, max_name_length: int = 50) -> Refusal:
    with pytest.raises(Refusal) as caught:
        parse(target, max_name_length)
    return caught.value


@pytest.mark.parametrize("target", ["/ws?host&name=GM", "/ws?host=&name=GM",
                                    "/ws?host=1&name=GM", "/ws?name=GM&host"])
def test_host_without_a_code_lets_the_server_pick(target: str) -> None:
    assert parse(target) == CreateRoom(code=None, name="GM")


def test_host_with_a_code_asks_for_that_code() -> None:
    assert parse("/ws?host=K7PX&name=GM") == CreateRoom(code="K7PX", name="GM")


def test_lowercase_codes_are_normalized() -> None:
    assert parse("/ws?host=k7px&name=GM") == CreateRoom(code="K7PX", name="GM")
    assert parse("/ws?join=k7px&name=Ana") == JoinRoom(code="K7PX", name="Ana")
    resume = parse("/ws?reconnect=%20k7px%20&token=t")
    assert isinstance(resume, ResumeSeat)
    assert resume.code == "K7PX"


@pytest.mark.parametrize("code", ["AB0D", "ABOD", "AB1D", "ABID", "ABLD", "abld"])
def test_host_code_with_look_alike_characters_is_refused(code: str) -> None:
    error = refused(f"/ws?host={code}&name=GM")
    assert error.code == Code.BAD_REQUEST
    assert CODE_ALPHABET in error.message


def test_code_alphabet_has_no_look_alikes() -> None:
    assert not set(CODE_ALPHABET) & set("01ILO")


@pytest.mark.parametrize("code", ["ABC", "ABCDE", "AB-D", "AB+D", "%C3%84BCD", "12"])
def test_codes_that_are_not_four_ascii_letters_or_digits_are_refused(code: str) -> None:
    assert refused(f"/ws?join={code}&name=Ana").code == Code.BAD_REQUEST
    assert refused(f"/ws?host={code}&name=Ana").code == Code.BAD_REQUEST
    assert refused(f"/ws?reconnect={code}&token=t").code == Code.BAD_REQUEST


def test_join_needs_a_code() -> None:
    assert refused("/ws?join=&name=Ana").code == Code.BAD_REQUEST


def test_join_takes_a_code_and_a_name() -> None:
    assert parse("/ws?join=K7PX&name=Ana") == JoinRoom(code="K7PX", name="Ana")


def test_reconnect_reads_token_last_seen_sequence_and_epoch() -> None:
    assert parse("/ws?reconnect=K7PX&token=secret&lastSeenSequence=42&epoch=3") == ResumeSeat(
        code="K7PX", token="secret", last_seen=42, epoch=3)


def test_reconnect_without_last_seen_sequence_asks_for_a_baseline() -> None:
    for target in ("/ws?reconnect=K7PX&token=t", "/ws?reconnect=K7PX&token=t&lastSeenSequence="):
        assert parse(target) == ResumeSeat(code="K7PX", token="t", last_seen=None, epoch=None)


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "1e3", "%C2%B2", "9" * 19])
def test_last_seen_sequence_and_epoch_must_be_non_negative_integers(value: str) -> None:
    error = refused(f"/ws?reconnect=K7PX&token=t&lastSeenSequence={value}")
    assert error.code == Code.BAD_REQUEST
    assert "lastSeenSequence" in error.message
    assert "epoch" in refused(f"/ws?reconnect=K7PX&token=t&epoch={value}").message


@pytest.mark.parametrize("target", ["/ws?reconnect=K7PX", "/ws?reconnect=K7PX&token=",
                                    "/ws?reconnect=K7PX&token=" + "t" * 129])
def test_missing_or_oversized_token_is_invalid_token(target: str) -> None:
    assert refused(target).code == Code.INVALID_TOKEN


def test_a_token_of_128_characters_is_accepted() -> None:
    request = parse("/ws?reconnect=K7PX&token=" + "t" * 128)
    assert isinstance(request, ResumeSeat)
    assert request.token == "t" * 128


def test_names_are_trimmed_and_nfc_normalized() -> None:
    assert parse("/ws?join=K7PX&name=%20%20Ana%20") == JoinRoom(code="K7PX", name="Ana")
    # "e" + combining acute accent becomes the single character "é".
    assert parse("/ws?join=K7PX&name=Ine%CC%81s") == JoinRoom(code="K7PX", name="In\u00e9s")


def test_a_name_at_the_length_limit_is_accepted() -> None:
    assert parse("/ws?join=K7PX&name=" + "a" * 50) == JoinRoom(code="K7PX", name="a" * 50)
    assert parse("/ws?join=K7PX&name=abc", max_name_length=3) == JoinRoom(code="K7PX",
                                                                          name="abc")


@pytest.mark.parametrize("name", [
    "",
    "%20%20",
    "a" * 51,
    "a%00b",
    "a%07b",
    "a%0Ab",
    "a%E2%80%8Bb",   # zero-width space (Cf)
    "a%EE%80%80b",   # private use (Co)
])
def test_bad_names_are_refused(name: str) -> None:
    assert refused(f"/ws?join=K7PX&name={name}").code == Code.BAD_REQUEST
    assert refused(f"/ws?host&name={name}").code == Code.BAD_REQUEST


def test_a_missing_name_is_refused() -> None:
    assert refused("/ws?join=K7PX").code == Code.BAD_REQUEST
    assert refused("/ws?host").code == Code.BAD_REQUEST


def test_the_name_limit_is_the_configured_one() -> None:
    assert "longer than 3" in refused("/ws?join=K7PX&name=abcd", max_name_length=3).message


@pytest.mark.parametrize("target", ["/ws?join=K7PX&name=a&name=b",
                                    "/ws?join=K7PX&join=K7PX&name=a",
                                    "/ws?reconnect=K7PX&token=t&token=u"])
def test_a_parameter_given_twice_is_refused(target: str) -> None:
    error = refused(target)
    assert error.code == Code.BAD_REQUEST
    assert "more than once" in error.message


@pytest.mark.parametrize("target", ["/ws", "/ws?name=Ana", "/ws?host&join=K7PX&name=Ana",
                                    "/ws?join=K7PX&reconnect=K7PX&token=t&name=Ana",
                                    "/ws?host&join=K7PX&reconnect=K7PX&name=Ana"])
def test_exactly_one_mode_is_required(target: str) -> None:
    error = refused(target)
    assert error.code == Code.BAD_REQUEST
    assert "exactly one" in error.message


def test_a_query_string_that_is_not_utf8_is_refused() -> None:
    assert refused("/ws?join=K7PX&name=%FF").code == Code.BAD_REQUEST


def test_too_many_parameters_are_refused() -> None:
    extra = "&".join(f"k{i}=1" for i in range(20))
    assert refused(f"/ws?join=K7PX&name=Ana&{extra}").code == Code.BAD_REQUEST
