"""The allocator tuning of scprob._settings (glibc mallopt, once per process)."""

import ctypes
import platform

import pytest

from scprob import _settings


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(_settings, "_malloc_tuned", False)
    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "SCPROB_TUNE_MALLOC"):
        monkeypatch.delenv(k, raising=False)


def _glibc() -> bool:
    return platform.system() == "Linux" and hasattr(ctypes.CDLL(None), "mallopt") and platform.libc_ver()[0] == "glibc"


def test_tunes_once(fresh):
    if not _glibc():
        pytest.skip("glibc only")
    assert _settings._tune_malloc() is True
    assert _settings._tune_malloc() is False  # once per process


@pytest.mark.parametrize("env", [("SCPROB_TUNE_MALLOC", "0"), ("MALLOC_MMAP_THRESHOLD_", "1048576"),
                                 ("MALLOC_TRIM_THRESHOLD_", "1048576")])
def test_users_choice_wins(fresh, monkeypatch, env):
    monkeypatch.setenv(*env)
    assert _settings._tune_malloc() is False


def test_setting_off(fresh, monkeypatch):
    called = []
    monkeypatch.setattr(_settings, "_tune_malloc", lambda: called.append(1))
    s = _settings.Settings()
    s.tune_malloc = False
    s.apply_threads()
    assert not called
    s.tune_malloc = True
    s.apply_threads()
    assert called == [1]
