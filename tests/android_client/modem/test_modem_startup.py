"""ModemBackend.start(): the checks a real modem needs, each failing with a clear error."""

from __future__ import annotations

import asyncio

import pytest
from fake_modem import OWN_NUMBER, FakeModem, MakeBackend

from android_client.backend import BackendError
from android_client.modem import ModemBackend, ModemConfig, ModemError, signal_bars


async def test_start_configures_the_modem(modem: FakeModem, backend: ModemBackend) -> None:
    assert not modem.echo
    assert modem.cmee == 1
    assert modem.pdu_mode
    assert modem.cnmi == "2,1,0,1,0"  # +CMTI for stored SMS, +CDS for status reports
    for command in ("ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CMGF=0", "AT+CREG?", "AT+CSMS=0"):
        assert command in modem.commands
    assert backend.info.imei == "356938035643809"
    assert backend.info.hardware_id == "modem-356938035643809"
    [sim] = backend.sims()
    assert (sim.slot, sim.carrier, sim.number) == (0, "Fake Telecom", OWN_NUMBER)


async def test_status_reports_signal_network_and_no_battery(
    modem: FakeModem, backend: ModemBackend
) -> None:
    status = await backend.status()
    assert (status.battery, status.charging, status.signal, status.network) == (
        100,
        True,
        4,
        "LTE",
    )
    modem.rssi, modem.act = 99, 0
    status = await backend.status()
    assert (status.signal, status.network) == (0, "GSM")


@pytest.mark.parametrize(
    ("rssi", "bars"), [(0, 0), (2, 0), (3, 1), (5, 2), (8, 3), (11, 3), (12, 4), (31, 4), (99, 0)]
)
def test_signal_bars(rssi: int, bars: int) -> None:
    assert signal_bars(rssi) == bars


async def test_sim_pin_is_entered(modem: FakeModem, make_backend: MakeBackend) -> None:
    modem.pin = "1234"
    await make_backend(pin="1234")
    assert 'AT+CPIN="1234"' in modem.commands
    assert modem.sim_ready


async def test_wrong_pin_is_tried_once_and_explained(
    modem: FakeModem, make_backend: MakeBackend
) -> None:
    modem.pin = "1234"
    with pytest.raises(ModemError, match=r"rejected the PIN.*3 wrong PINs") as info:
        await make_backend(pin="9999")
    assert "9999" not in str(info.value)  # the PIN never ends up in logs


async def test_wrong_pin_is_not_retried_on_recovery(
    modem: FakeModem, make_backend: MakeBackend
) -> None:
    modem.pin = "1234"
    backend = await make_backend(pin="1234")
    # The SIM is swapped for one with another PIN and the modem restarts.
    modem.pin, modem.pdu_mode = "0000", False
    backend._needs_recovery = True
    for _ in range(3):
        result = await backend.send_sms("m1", "+4915112345678", "hi", None)
        assert (result.ok, result.error_code) == (False, "modem_unavailable")
        assert "PIN" in (result.error or "")
    assert modem.pin_attempts == 2  # one wrong try, then never again
    assert modem.pin_attempts == 2  # one attempt used, never retried automatically


async def test_missing_pin_is_explained(modem: FakeModem, make_backend: MakeBackend) -> None:
    modem.pin = "1234"
    with pytest.raises(ModemError, match="needs its PIN: pass --pin"):
        await make_backend()
    assert not any(c.startswith("AT+CPIN=") for c in modem.commands)


async def test_puk_locked_sim_is_explained(modem: FakeModem, make_backend: MakeBackend) -> None:
    modem.puk_locked = True
    with pytest.raises(ModemError, match="PUK"):
        await make_backend(pin="1234")


@pytest.mark.parametrize(("stat", "text"), [(0, "not searching"), (2, "searching"), (3, "denied")])
async def test_not_registered_is_explained(
    modem: FakeModem, make_backend: MakeBackend, stat: int, text: str
) -> None:
    modem.registration = stat
    with pytest.raises(ModemError, match=rf"not registered on a network .*{text}"):
        await make_backend()


async def test_roaming_and_packet_only_registration_are_fine(
    modem: FakeModem, make_backend: MakeBackend
) -> None:
    modem.registration = 5
    await (await make_backend()).aclose()
    modem.registration, modem.gprs_registration = 0, 1
    await make_backend()


async def test_a_second_agent_on_the_same_port_is_refused(
    backend: ModemBackend, make_backend: MakeBackend
) -> None:
    with pytest.raises(ModemError, match="lock"):
        await make_backend()


async def test_start_waits_for_registration(modem: FakeModem, make_backend: MakeBackend) -> None:
    modem.registration = 2

    async def register_after_first_poll() -> None:
        await modem.wait_until(lambda: "AT+CREG?" in modem.commands)
        modem.registration = 1

    helper = asyncio.create_task(register_after_first_poll())
    await make_backend(registration_timeout=5.0)
    await helper
    assert modem.commands.count("AT+CREG?") >= 2


async def test_silent_modem_is_explained(modem: FakeModem, make_backend: MakeBackend) -> None:
    modem.silent = True
    with pytest.raises(ModemError, match=r"no answer to AT.*ModemManager"):
        await make_backend(command_timeout=0.1)


async def test_missing_port_is_explained(make_backend: MakeBackend) -> None:
    backend = ModemBackend(ModemConfig(port="/dev/ttyNOPE0"))
    with pytest.raises(ModemError, match=r"cannot open /dev/ttyNOPE0"):
        await backend.start()


async def test_status_report_setting_falls_back(
    modem: FakeModem, make_backend: MakeBackend
) -> None:
    modem.cnmi_accepts = lambda setting: setting.endswith(",2,0")  # only stored reports
    await make_backend()
    assert modem.cnmi == "2,1,0,2,0"


def test_modem_errors_are_backend_errors() -> None:
    assert issubclass(ModemError, BackendError)


@pytest.mark.parametrize(
    "bad",
    [
        {"port": ""},
        {"port": "/dev/x", "pin": "12"},
        {"port": "/dev/x", "pin": "abcd"},
        {"port": "/dev/x", "command_timeout": 0},
        {"port": "/dev/x", "baudrate": 0},
    ],
)
def test_config_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ModemConfig(**bad)  # type: ignore[arg-type]


async def test_not_started_backend_fails_sends_softly() -> None:
    backend = ModemBackend(ModemConfig(port="/dev/ttyNOPE0"))
    result = await backend.send_sms("m1", "+4915112345678", "hi", None)
    assert (result.ok, result.error_code, result.retryable) == (False, "modem_unavailable", True)
    status = await backend.status()
    assert status.signal == 0
