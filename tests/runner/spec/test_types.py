import pytest

from runner.spec.types import approx_size, format_size, parse_gpus, parse_size


@pytest.mark.parametrize(("text", "n"), [("8g", 8 * 1024**3), ("512m", 512 * 1024**2), ("1.5GiB", 1536 * 1024**2),
                                         ("64k", 65536), (" 2G ", 2 * 1024**3), ("4096b", 4096), ("100B", 100)])
def test_parse_size(text: object, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["lots", "8x", "", "-1g", 0, -5, True, "0.1b", "1e23g", "2000t"])
def test_parse_size_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


@pytest.mark.parametrize("bare", [512, "512", 8.5, " 64 "])
def test_a_bare_number_is_refused_not_read_as_bytes(bare: object) -> None:
    # docker reads --shm-size 512 as 512 bytes: the DataLoader's Bus error again.
    with pytest.raises(ValueError, match="needs a unit"):
        parse_size(bare)


def test_format_size_is_exact_and_round_trips() -> None:
    for n in (8 * 1024**3, 1536 * 1024**2, 65536, 100, 3 * 1024**4):
        assert parse_size(format_size(n)) == n
    assert format_size(8 * 1024**3) == "8g"
    assert format_size(1536 * 1024**2) == "1536m"
    assert format_size(100) == "100b"


@pytest.mark.parametrize(("value", "out"), [("all", "all"), ("ALL", "all"), (2, 2), ("2", 2), (0, 0), (None, 0),
                                            ([0, 3], [0, 3])])
def test_parse_gpus(value: object, out: object) -> None:
    assert parse_gpus(value) == out


@pytest.mark.parametrize(("value", "msg"), [([0, "a"], r"\[1\] 'a'"), ([1.5], r"\[0\] 1.5"), ([True], "True"),
                                            (-1, "negative"), ("some", "'all'"), ([1, 1], "repeated"), ([], "empty"),
                                            (99999999999999999999999, "more than any machine"),
                                            ("99999999999999999999999", "more than any machine"), ([0, 64], r"\[1\] 64")])
def test_parse_gpus_refuses(value: object, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        parse_gpus(value)


def test_approx_size_reads_like_a_person_would_say_it() -> None:
    cases = {0: "0 B", 1023: "1023 B", 1024: "1.00 KiB", 14121: "13.8 KiB", 191725: "187 KiB",
             297708660: "284 MiB", 2 * 1024**3: "2.00 GiB", 5 * 1024**4: "5.00 TiB"}
    assert {n: approx_size(n) for n in cases} == cases
