import threading
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from deploy import PolicyClient, PolicyServerError
from deploy.fake_policy import FakePolicy
from deploy.server import PolicyServer
from deploy.wire import NDARRAY_TAG, WireError, packb, unpackb
from policy_models.normalization import Stats

TOKEN = "s3cret"
SHAPES = {"rgb_static": (200, 200, 3), "rgb_gripper": (84, 84, 3)}


def good_obs(seed=0):
    rng = np.random.default_rng(seed)
    return {"rgb_obs": {c: rng.integers(0, 256, s, dtype=np.uint8) for c, s in SHAPES.items()}}


@pytest.fixture
def served():
    policy = FakePolicy(delay_s=0.01, image_shapes=SHAPES)
    server = PolicyServer(policy, host="127.0.0.1", port=0, token=TOKEN, max_request_bytes=2**20)
    with server.start_in_thread() as thread:
        yield policy, server, thread.port


def raw_connect(port):
    ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=2**24, proxy=None)
    unpackb(ws.recv(timeout=10))  # metadata
    return ws


def raw_request(ws, payload):
    ws.send(payload if isinstance(payload, (bytes, str)) else packb(payload))
    return unpackb(ws.recv(timeout=10))


def test_wire_round_trip_and_rejects():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.uint8(3), np.zeros((0, 2), bool)],
           "c": np.asfortranarray(np.ones((3, 4), ">f8")), "s": "x"}
    back = unpackb(packb(msg))
    np.testing.assert_array_equal(back["a"], msg["a"])
    assert back["a"].dtype == np.float32 and back["a"].flags.writeable
    assert back["b"][0] == 3 and back["b"][1].shape == (0, 2) and back["b"][1].dtype == bool
    np.testing.assert_array_equal(back["c"], np.ones((3, 4)))
    bad = {"x": {"y": {NDARRAY_TAG: b"\x00" * 8, "dtype": "|O", "shape": [1]}}}
    with pytest.raises(WireError, match=r"^x\.y: ndarray dtype"):
        unpackb(packb(bad))
    with pytest.raises(WireError, match="needs 16 bytes, got 8"):
        unpackb(packb({"x": {NDARRAY_TAG: b"\x00" * 8, "dtype": "<f4", "shape": [4]}}))
    with pytest.raises(TypeError):
        packb({"x": np.array([object()])})
    # shapes whose int64 product wraps around, or that numpy cannot index: named, not a crash of the handler
    for shape in ([2**32, 2**32], [2**62, 4, 0], [2**63 + 5, 0]):
        with pytest.raises(WireError, match=r"^x: ndarray"):
            unpackb(packb({"x": {NDARRAY_TAG: b"", "dtype": "|u1", "shape": shape}}))
    with pytest.raises(WireError, match="nested more than 32 levels deep"):
        unpackb(b"\x91" * 990 + b"\x01")  # valid msgpack, deeper than Python's recursion


def test_round_trip_metadata_and_actions(served):
    policy, server, port = served
    with PolicyClient("127.0.0.1", port, token=TOKEN) as client:
        md = client.metadata
        assert md["cameras"] == ["rgb_static", "rgb_gripper"]
        assert md["image_shapes"] == {"rgb_static": [200, 200, 3], "rgb_gripper": [84, 84, 3]}
        assert (md["action_dim"], md["chunk_length"], md["state_dim"]) == (7, 10, 0)
        assert md["token_required"] is True and md["server_version"] and md["protocol_version"] == 1
        assert (md["max_clients"], md["idle_timeout_s"], md["infer_timeout_s"]) == (16, None, None)
        obs = good_obs()
        reply = client.infer(obs, "open the drawer")
        assert reply["actions"].shape == (10, 7) and reply["actions"].dtype == np.float32
        np.testing.assert_allclose(reply["actions"][:, 0], 0.1 * np.arange(1, 11) / 10, rtol=1e-6)
        assert set(reply["server_timing"]) >= {"infer_ms", "wait_ms", "total_ms"}
        assert reply["server_timing"]["infer_ms"] >= 10.0  # the fake policy sleeps 10 ms
        got = policy.last_obs["rgb_obs"]["rgb_static"]
        assert got.shape == (1, 200, 200, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got[0], obs["rgb_obs"]["rgb_static"])
        assert policy.last_instruction == "open the drawer"


def _with(obs=None, **kw):
    req = {"observation": good_obs() if obs is None else obs, "instruction": "go", "token": TOKEN}
    req.update(kw)
    return req


def _obs_with(cam, value):
    obs = good_obs()
    obs["rgb_obs"][cam] = value
    return obs


BAD_REQUESTS = {
    "unknown request key": (_with(extra=1), "extra"),
    "unknown observation key": (_with(obs={**good_obs(), "depth_obs": np.zeros(3)}), "observation.depth_obs"),
    "state for a stateless policy": (_with(obs={**good_obs(), "state_obs": np.zeros(7)}), "observation.state_obs"),
    "missing observation": ({"instruction": "go", "token": TOKEN}, "observation"),
    "unknown camera": (_with(obs=_obs_with("rgb_wrist", np.zeros((84, 84, 3), np.uint8))),
                       "observation.rgb_obs.rgb_wrist"),
    "missing camera": (_with(obs={"rgb_obs": {"rgb_static": good_obs()["rgb_obs"]["rgb_static"]}}),
                       "observation.rgb_obs.rgb_gripper"),
    "wrong shape": (_with(obs=_obs_with("rgb_static", np.zeros((100, 100, 3), np.uint8))),
                    "observation.rgb_obs.rgb_static"),
    "wrong dtype": (_with(obs=_obs_with("rgb_gripper", np.zeros((84, 84, 3), np.float32))),
                    "observation.rgb_obs.rgb_gripper"),
    "not an array": (_with(obs=_obs_with("rgb_gripper", [[1, 2, 3]])), "observation.rgb_obs.rgb_gripper"),
    "object dtype": (_with(obs=_obs_with("rgb_gripper", {NDARRAY_TAG: b"\x00" * 8, "dtype": "|O", "shape": [1]})),
                     "observation.rgb_obs.rgb_gripper"),
    "byte count": (_with(obs=_obs_with("rgb_gripper", {NDARRAY_TAG: b"\x00" * 5, "dtype": "|u1",
                                                       "shape": [84, 84, 3]})), "observation.rgb_obs.rgb_gripper"),
    "empty instruction": (_with(instruction=""), "instruction"),
    "instruction not a string": (_with(instruction=["go"]), "instruction"),
    "bad token": (_with(token="wrong"), "token"),
    "missing token": ({"observation": good_obs(), "instruction": "go"}, "token"),
    "oversized": (_with(obs=_obs_with("rgb_static", np.zeros((700, 700, 3), np.uint8))), "request"),
    "not msgpack": (b"\xc1\xc1 not msgpack", "request"),
    "text frame": ("hello", "request"),
    "not a map": ([1, 2, 3], "request"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_request_gets_error_and_connection_survives(served, case):
    policy, server, port = served
    payload, field = BAD_REQUESTS[case]
    ws = raw_connect(port)
    try:
        reply = raw_request(ws, payload)
        assert "error" in reply and "actions" not in reply
        assert reply["error"]["field"] == field, reply
        assert reply["error"]["message"]
        ok = raw_request(ws, _with())  # same connection still works
        assert ok["actions"].shape == (10, 7)
    finally:
        ws.close()
    assert policy.calls == 1  # malformed requests never reach the model


def test_error_messages_are_specific(served):
    _, _, port = served
    with PolicyClient("127.0.0.1", port, token=TOKEN) as client:
        with pytest.raises(PolicyServerError, match=r"rgb_static: expected shape \(200, 200, 3\), got \(100, 100, 3\)"):
            client.infer(_obs_with("rgb_static", np.zeros((100, 100, 3), np.uint8)), "go")
        with pytest.raises(PolicyServerError, match="rgb_gripper: expected dtype uint8, got float32"):
            client.infer(_obs_with("rgb_gripper", np.zeros((84, 84, 3), np.float32)), "go")
        with pytest.raises(PolicyServerError, match=r"request: \d+ bytes exceed max_request_bytes=1048576"):
            client.infer(_obs_with("rgb_static", np.zeros((700, 700, 3), np.uint8)), "go")
    with PolicyClient("127.0.0.1", port, token="nope") as client, pytest.raises(PolicyServerError) as e:
        client.infer(good_obs(), "go")
    assert e.value.field == "token"


def test_far_oversized_message_closes_only_that_connection(served):
    _, _, port = served
    ws = raw_connect(port)
    ws.send(b"\x00" * (3 * 2**20))  # beyond the transport limit (2 x max_request_bytes): closed with 1009
    with pytest.raises(ConnectionClosed) as e:
        ws.recv(timeout=10)
    assert e.value.rcvd is not None and e.value.rcvd.code == 1009
    with PolicyClient("127.0.0.1", port, token=TOKEN) as client:
        assert client.infer(good_obs(), "go")["actions"].shape == (10, 7)


def test_good_client_served_while_bad_slow_and_dropped_clients_misbehave(served):
    policy, server, port = served
    results, errors, stop = [], [], threading.Event()

    def good():
        try:
            with PolicyClient("127.0.0.1", port, token=TOKEN) as client:
                for i in range(25):
                    results.append(client.infer(good_obs(i), "stack the blocks")["actions"].shape)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def bad():
        try:
            ws = raw_connect(port)
            n = 0
            while not stop.is_set():
                payload, field = list(BAD_REQUESTS.values())[n % len(BAD_REQUESTS)]
                reply = raw_request(ws, payload)
                if reply["error"]["field"] != field:
                    raise AssertionError(f"{field}: {reply}")
                n += 1
            ws.close()
            errors.append(n)  # number of malformed requests answered
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def dropper():
        for _ in range(5):  # send a valid request and vanish before the reply
            ws = raw_connect(port)
            ws.send(packb(_with()))
            ws.close()

    idle = connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None)  # connected, never sends anything
    threads = [threading.Thread(target=f) for f in (good, bad, dropper)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    threads[0].join(timeout=60)
    stop.set()
    for t in threads[1:]:
        t.join(timeout=60)
    idle.close()
    n_bad = [e for e in errors if isinstance(e, int)]
    assert not [e for e in errors if not isinstance(e, int)]
    assert results == [(10, 7)] * 25
    assert n_bad and n_bad[0] > 0
    assert policy.overlapping_calls == 0  # inference serialised by the server's lock
    assert time.perf_counter() - t0 < 30
    with PolicyClient("127.0.0.1", port, token=TOKEN) as client:  # and it is still serving
        assert client.infer(good_obs(), "go")["actions"].shape == (10, 7)


def test_state_normalised_in_and_actions_denormalised_out():
    rng = np.random.default_rng(0)
    s01 = rng.uniform(-2, -1, 4)
    stats = Stats(state_01=s01, state_99=s01 + 3, action_01=np.full(4, -0.5), action_99=np.full(4, 0.5))
    policy = FakePolicy(cameras=("cam",), action_dim=4, chunk_length=3, state_dim=4)
    with PolicyServer(policy, stats=stats, port=0).start_in_thread() as t, PolicyClient(port=t.port) as client:
        assert client.metadata["relative_mode"] == "componentwise"
        state = rng.uniform(-1, 1, 4)
        reply = client.infer({"rgb_obs": {"cam": np.zeros((8, 8, 3), np.uint8)}, "state_obs": state}, "go")
        norm_state = np.clip(2 * (state - s01) / (3 + 1e-8) - 1, -1, 1)
        np.testing.assert_allclose(policy.last_obs["state_obs"].numpy()[0], norm_state, atol=1e-6)
        out = (np.arange(1, 4) / 3)[:, None] * (0 - norm_state)[None]  # what the fake policy returns
        np.testing.assert_allclose(reply["actions"], (out + 1) / 2 * 1.0 - 0.5, atol=1e-6)
        with pytest.raises(PolicyServerError, match=r"observation\.state_obs: expected shape \(4,\)"):
            client.infer({"rgb_obs": {"cam": np.zeros((8, 8, 3), np.uint8)}, "state_obs": np.zeros(5)}, "go")
        with pytest.raises(PolicyServerError, match=r"observation\.state_obs: missing"):
            client.infer({"rgb_obs": {"cam": np.zeros((8, 8, 3), np.uint8)}}, "go")


class _FlakyPolicy(FakePolicy):
    def predict_action_chunk(self, obs, instruction):
        if instruction == "boom":
            raise RuntimeError("exploded")
        if instruction == "exit":
            raise SystemExit(3)
        if instruction == "nan":
            return np.full((1, 10, 7), np.nan, np.float32)
        if instruction == "shape":
            return np.zeros((1, 2, 2), np.float32)
        return super().predict_action_chunk(obs, instruction)


def test_policy_failure_is_reported_and_server_keeps_serving():
    with PolicyServer(_FlakyPolicy(), port=0).start_in_thread() as t, PolicyClient(port=t.port) as client:
        with pytest.raises(PolicyServerError, match="policy: inference failed: RuntimeError: exploded"):
            client.infer(good_obs(), "boom")
        with pytest.raises(PolicyServerError, match=r"policy: .*shape \(1, 2, 2\)"):
            client.infer(good_obs(), "shape")
        with pytest.raises(PolicyServerError, match="policy: inference failed: RuntimeError: .*non-finite actions"):
            client.infer(good_obs(), "nan")  # never sent to a robot
        with pytest.raises(PolicyServerError, match="policy: inference failed: SystemExit: 3"):
            client.infer(good_obs(), "exit")  # the server's loop survives it
        assert client.infer(good_obs(), "fine")["actions"].shape == (10, 7)


def test_state_beyond_float32_range_is_refused():
    policy = FakePolicy(cameras=("cam",), action_dim=4, chunk_length=3, state_dim=4)
    with PolicyServer(policy, port=0).start_in_thread() as t, PolicyClient(port=t.port) as client:
        obs = {"rgb_obs": {"cam": np.zeros((8, 8, 3), np.uint8)}, "state_obs": np.array([1e300, 0, 0, 0])}
        with pytest.raises(PolicyServerError, match=r"observation\.state_obs: has values beyond the float32 range"):
            client.infer(obs, "go")


def test_a_timed_out_client_never_reads_the_late_reply_as_the_next_answer():
    policy = FakePolicy(cameras=("cam",), action_dim=4, chunk_length=3, state_dim=4, delay_s=0.5)
    with PolicyServer(policy, port=0).start_in_thread() as t:
        client = PolicyClient(port=t.port, timeout=0.1)
        obs = {"rgb_obs": {"cam": np.zeros((8, 8, 3), np.uint8)}, "state_obs": np.ones(4)}
        with pytest.raises(TimeoutError):
            client.infer(obs, "go")
        with pytest.raises(PolicyServerError, match="connection: closed after an earlier request timed out"):
            client.infer(obs, "go")
        client.close()  # idempotent


def test_wait_ms_counts_the_queue_behind_other_requests():
    policy = FakePolicy(cameras=("cam",), action_dim=4, chunk_length=3, delay_s=0.2)
    with PolicyServer(policy, port=0).start_in_thread() as t:
        obs = {"rgb_obs": {"cam": np.zeros((8, 8, 3), np.uint8)}}
        waits = []

        def ask():
            with PolicyClient(port=t.port) as client:
                waits.append(client.infer(obs, "go")["server_timing"]["wait_ms"])

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert max(waits) > 150  # the last of three waited for at least one 200 ms chunk before it


def test_infer_timeout_answers_instead_of_waiting_on_a_stuck_model():
    """A request without a chunk within infer_timeout_s gets an error; one queued behind it is dropped, not run later;
    while the model is still busy past the limit, new requests are refused at once; then service resumes."""
    policy = FakePolicy(cameras=("cam",), action_dim=4, chunk_length=3, delay_s=1.5)
    obs = {"rgb_obs": {"cam": np.zeros((8, 8, 3), np.uint8)}}
    with PolicyServer(policy, port=0, infer_timeout_s=0.3).start_in_thread() as t:
        errors = []

        def ask():
            with PolicyClient(port=t.port) as client:
                try:
                    client.infer(obs, "go")
                except PolicyServerError as e:
                    errors.append(e)

        first, queued = threading.Thread(target=ask), threading.Thread(target=ask)
        first.start()
        queued.start()
        first.join()
        queued.join()
        assert [e.field for e in errors] == ["policy", "policy"]
        assert any("no chunk within infer_timeout_s=0.3 s" in e.message for e in errors)  # the one that ran
        # the other was dropped from the queue the same way, or, had it come 0.3 s late, refused as below
        assert all("no chunk within" in e.message or "has been running one request" in e.message for e in errors)
        with PolicyClient(port=t.port) as client:  # the first chunk is still running (1.5 s)
            with pytest.raises(PolicyServerError, match=r"policy: the model has been running one request for"):
                client.infer(obs, "go")
            deadline = time.monotonic() + 10
            while policy.calls < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            policy.delay_s = 0.0
            assert client.infer(obs, "go")["actions"].shape == (3, 4)  # served again once the model is free
        assert client.metadata["infer_timeout_s"] == 0.3
    assert policy.calls == 2  # the first request and the last; the queued one never reached the model


def test_server_rejects_bad_setup():
    with pytest.raises(TypeError, match="predict_action_chunk"):
        PolicyServer(object())
    stats = Stats(state_01=np.zeros(3), state_99=np.ones(3), action_01=np.zeros(3), action_99=np.ones(3))
    with pytest.raises(ValueError, match="action dims"):
        PolicyServer(FakePolicy(), stats=stats)
    with pytest.raises(ValueError, match="max_clients must be at least 1, got 0"):
        PolicyServer(FakePolicy(), max_clients=0)
    with pytest.raises(ValueError, match="idle_timeout_s must be positive or None, got 0"):
        PolicyServer(FakePolicy(), idle_timeout_s=0)
    with pytest.raises(ValueError, match="infer_timeout_s must be positive or None, got -1"):
        PolicyServer(FakePolicy(), infer_timeout_s=-1)


def _connect_within(port: int, seconds: float) -> PolicyClient:
    """A client, retrying while the server still counts a connection that has just been closed."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return PolicyClient(port=port)
        except PolicyServerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_connections_beyond_max_clients_are_refused_with_the_reason():
    policy = FakePolicy(cameras=("cam",), action_dim=4, chunk_length=3)
    obs = {"rgb_obs": {"cam": np.zeros((8, 8, 3), np.uint8)}}
    with PolicyServer(policy, port=0, max_clients=2).start_in_thread() as t:
        first, second = PolicyClient(port=t.port), raw_connect(t.port)
        busy = r"connection: .*server busy: 2 clients connected \(max_clients=2\)"
        with pytest.raises(PolicyServerError, match=busy):
            PolicyClient(port=t.port)
        assert first.infer(obs, "go")["actions"].shape == (3, 4)  # those connected are still served
        second.close()
        with _connect_within(t.port, 10) as third:  # a freed place is given to the next client
            assert third.infer(obs, "go")["actions"].shape == (3, 4)
        first.close()


def test_idle_connections_are_closed_after_idle_timeout_s_and_active_ones_are_not():
    policy = FakePolicy(cameras=("cam",), action_dim=4, chunk_length=3)
    obs = {"rgb_obs": {"cam": np.zeros((8, 8, 3), np.uint8)}}
    with PolicyServer(policy, port=0, idle_timeout_s=0.6, max_clients=2).start_in_thread() as t:
        idle, active = PolicyClient(port=t.port), PolicyClient(port=t.port)
        for _ in range(12):  # 1.2 s of requests 0.1 s apart: never idle for 0.6 s
            assert active.infer(obs, "go")["actions"].shape == (3, 4)
            time.sleep(0.1)
        with pytest.raises(PolicyServerError, match=r"connection: the server closed the connection \(idle for 0.6 s"):
            idle.infer(obs, "go")
        with pytest.raises(PolicyServerError, match=r"connection: closed by the server \(idle for 0.6 s"):
            idle.infer(obs, "go")  # and says so again, not that a request timed out
        with _connect_within(t.port, 10) as late:  # the idle client's place was freed
            assert late.infer(obs, "go")["actions"].shape == (3, 4)
        active.close()


def test_robot_loop_example_converges():
    from deploy.robot_loop_example import main

    summary = main(["--steps", "40", "--replan_period", "4"])
    assert summary["requests"] == 10
    assert summary["final_distance_to_goal"] < 1e-2 * summary["start_distance_to_goal"]


def test_benchmark_smoke(capsys):
    from benchmarks.server_roundtrip import main

    report = main(["--payload", "calvin", "--requests", "5", "--warmup", "1", "--clients", "2"])
    res = report["results"]["calvin"]
    assert res["sequential"]["requests"] == 5 and res["sequential"]["median_ms"] > 0
    assert res["concurrent"]["clients"] == 2
    assert '"benchmark": "server_roundtrip"' in capsys.readouterr().out


@pytest.mark.parametrize("payload", ["calvin", "xbot"])
def test_benchmark_serves_a_random_checkpoint_through_the_servers_loader(payload, monkeypatch, capsys):
    """--policy random saves a checkpoint of the payload's embodiment and loads it as the server does, so the round
    trip includes the model's time on the server's fast path."""
    from benchmarks.server_roundtrip import main
    from policy_models import checkpoints

    loaded = []
    original = checkpoints.load_inference_policy
    monkeypatch.setattr(checkpoints, "load_inference_policy",
                        lambda *a, **kw: loaded.append(kw) or original(*a, **kw))
    report = main(["--payload", payload, "--policy", "random", "--requests", "3", "--warmup", "1", "--clients", "1"])
    res = report["results"][payload]["sequential"]
    assert res["requests"] == 3 and res["server_infer_median_ms"] > 0
    assert res["median_ms"] >= res["server_infer_median_ms"]
    assert report["results"][payload]["warm_up_s"] > 0
    assert loaded == [{"compile_mode": None, "fused_decoder": False}]
    assert "tiny" in report["settings"]["policy"] and report["settings"]["fused_decoder"] is False
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--compile"])
    assert "need a model" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # Triton kernels: refused before anything is built, not a traceback later
        main(["--policy", "random", "--fused-decoder"])
    assert "needs --device cuda" in capsys.readouterr().err


def test_infer_ms_includes_the_copy_of_the_actions_to_the_host():
    """On CUDA the policy returns before the GPU has finished; the copy to the host is where the time goes."""
    import torch

    class SlowCopy:
        def __init__(self, tensor):
            self.tensor = tensor

        def detach(self):
            return self

        def float(self):
            return self

        def cpu(self):
            time.sleep(0.05)
            return self.tensor

    policy = FakePolicy()
    policy.predict_action_chunk = lambda obs, instruction: SlowCopy(torch.zeros(1, 10, 7))
    server = PolicyServer(policy, image_shapes={"rgb_static": (8, 8, 3), "rgb_gripper": (8, 8, 3)})
    actions, timing = server.infer({"rgb_obs": {}}, "x")
    assert actions.shape == (10, 7) and timing["infer_ms"] >= 50.0


def test_warm_up_answers_a_blank_request_of_the_expected_shapes():
    policy = FakePolicy(cameras=("a", "b"), state_dim=3, action_dim=3, chunk_length=2)
    policy.resolution = 16
    server = PolicyServer(policy, token="tok", image_shapes={"a": (24, 32, 3)})
    assert server.warm_up() > 0 and policy.calls == 1
    frames = policy.last_obs["rgb_obs"]
    assert frames["a"].shape == (1, 24, 32, 3) and frames["b"].shape == (1, 16, 16, 3)
    assert frames["a"].dtype == np.uint8 and not frames["a"].any()
    assert tuple(policy.last_obs["state_obs"].shape) == (1, 3) and policy.last_instruction == "warm up"
    with pytest.raises(ValueError, match="camera 'b' has no image_shapes"):
        PolicyServer(FakePolicy(cameras=("a", "b")), image_shapes={"a": (8, 8, 3)}).warm_up()


@pytest.mark.parametrize("flag, compiled", [([], None), (["--compile", "none"], None),
                                           (["--compile"], "default")])
def test_server_warms_up_before_serving_only_when_compiling(flag, compiled, monkeypatch):
    """A compiled policy compiles on its first chunk (minutes at full size): the server does that before it listens,
    not while the first client waits for a reply. The default, auto, compiles on CUDA only."""
    import argparse

    from deploy import server as server_module
    from policy_models import checkpoints

    events = []
    policy = FakePolicy()
    monkeypatch.setattr(checkpoints, "load_inference_policy",
                        lambda *a, compile_mode, **kw: events.append(("load", compile_mode)) or policy)
    monkeypatch.setattr(PolicyServer, "warm_up", lambda self: events.append("warm up") or 1.0)

    async def serve_forever(self):
        events.append("serve")

    monkeypatch.setattr(PolicyServer, "serve_forever", serve_forever)
    parser = argparse.ArgumentParser()
    server_module.add_server_args(parser)
    server_module.run_server_from_args(parser.parse_args(["--checkpoint", "CKPT", "--device", "cpu", *flag]))
    assert events == [("load", compiled), *(["warm up"] if compiled else []), "serve"]


def test_server_command_line_fake(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "deploy.server", "--fake", "--port", str(port), "--max_clients", "3",
                             "--idle_timeout_s", "30", "--infer_timeout_s", "20"],
                            env={**__import__("os").environ, "VPP_POLICY_TOKEN": "tok"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with PolicyClient("127.0.0.1", port, token="tok", connect_retry_s=60) as client:
            assert client.metadata["token_required"] is True
            md = client.metadata
            assert (md["max_clients"], md["idle_timeout_s"], md["infer_timeout_s"]) == (3, 30.0, 20.0)
            assert client.infer(good_obs(), "go")["actions"].shape == (10, 7)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert f"127.0.0.1:{port}" in out and "token required" in out
    assert proc.returncode == 0 and "server stopped (requests served: 1, rejected: 0)" in out  # SIGTERM: cleanly
