import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from robot.safe_pickle import UnsafePickleError, load_file, loads


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_arrays_and_plain_values_load() -> None:
    data = {"q": np.arange(8, dtype=np.float64), "rgb": np.zeros((2, 3, 3), np.uint8), "n": 3, "s": "x",
            "l": [1.5, (2, 3)], "scalar": np.float32(1.5)}
    for protocol in (2, 4, 5):
        back = loads(pickle.dumps(data, protocol=protocol))
        assert back["q"].tolist() == list(range(8)) and back["rgb"].dtype == np.uint8 and back["scalar"] == 1.5


def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "step.pkl"
    path.write_bytes(pickle.dumps({"joint_positions": np.zeros(8), "evil": Payload(marker)}))
    with pytest.raises(UnsafePickleError) as e:
        load_file(path)
    assert str(path) in str(e.value) and "posix.system" in str(e.value)
    assert not marker.exists()
