"""The server's flags: every one documented, environment variables under flags, and a bad value
is a usage error that names its flag (exit status 2), not a traceback."""

import pytest
import torch

from service.api.settings import Settings, parse_args


def test_flags_override_environment_variables_which_override_defaults(monkeypatch):
    monkeypatch.setenv("ATTNSERVE_PORT", "9001")
    monkeypatch.setenv("ATTNSERVE_MAX_RUNNING_REQUESTS", "7")
    settings = parse_args(["--port", "9002"])
    assert settings.port == 9002
    assert settings.max_running_requests == 7
    assert settings.kv_cache_mb == Settings.model_fields["kv_cache_mb"].default


def test_switches_reach_the_settings():
    settings = parse_args(["--reserve-full-length", "--batching", "static", "--quantize", "int8"])
    assert settings.reserve_full_length and settings.batching == "static"
    assert settings.quantize == "int8"
    assert not parse_args([]).reserve_full_length


def test_help_describes_every_flag(capsys):
    with pytest.raises(SystemExit) as exit:
        parse_args(["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ["--port", "--max-queued-requests", "--kv-cache-mb", "--batching", "--device"]:
        assert flag in text
    assert "None" not in text  # every flag has a description
    assert "port to listen on (default 8000; env ATTNSERVE_PORT)" in text


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (
            ["--port", "99999"],
            {},
            "--port (or ATTNSERVE_PORT): Input should be less than or equal to 65535",
        ),
        (
            ["--threads", "0"],
            {},
            "--threads (or ATTNSERVE_THREADS): Input should be greater than or equal to 1",
        ),
        (
            ["--dtype", "fp8"],
            {},
            "--dtype (or ATTNSERVE_DTYPE): Input should be 'float32', 'float16' or 'bfloat16'",
        ),
        (["--model", "en-de"], {}, "--model (or ATTNSERVE_MODELS): expects ID=PATH, got 'en-de'"),
        (
            ["--device", "tpu"],
            {},
            "--device (or ATTNSERVE_DEVICE): 'tpu' is not a device: cpu, cuda or cuda:N",
        ),
        (
            [],
            {"ATTNSERVE_PORT": "abc"},
            "--port (or ATTNSERVE_PORT): Input should be a valid integer",
        ),
        (["--log-level", "bogus"], {}, "--log-level (or ATTNSERVE_LOG_LEVEL): Input should be"),
        (
            ["--quantize", "int8", "--dtype", "float16"],
            {},
            "--quantize (or ATTNSERVE_QUANTIZE): int8 is for the CPU in float32, not cpu in float16",
        ),
        (
            ["--compile"],
            {"ATTNSERVE_QUANTIZE": "int8"},
            "--quantize (or ATTNSERVE_QUANTIZE): int8 does not go with compile",
        ),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_its_flag(capsys, monkeypatch, argv, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit:
        parse_args(argv)
    assert exit.value.code == 2
    assert f"attnserve: error: {message}" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_cuda_device_is_refused_before_loading(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])
    assert "--device (or ATTNSERVE_DEVICE): no CUDA device here" in capsys.readouterr().err
