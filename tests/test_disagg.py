"""Prefill/decode disaggregation: hand-checked transfers, conservation, TTFT split, decode-side admission."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from simulator.api import simulate
from conftest import make_parts, specs_from
from simulator.cluster.disagg import ArrivingKV, HeldUntilSent, InstanceShape, KVLink, TransferLink, get_kv_link
from simulator.cluster.router import make_router
from simulator.cluster.sim import Replica, run_cluster
from simulator.config import ConfigError, SimConfig
from simulator.request import Request
from workloads.spec import RequestSpec

LINK = KVLink("test", 1e9, 1e-3, "made up")
SHAPE = InstanceShape(1000.0, 2, 4)


def _send_two(layerwise):
    """Requests 0 (1000 tokens) and 1 (500 tokens), both prefilled from 0 to 100 ms, sent in that order."""
    link = TransferLink(0, LINK, SHAPE, layerwise)
    return link.send(0, 1000, 0.0, 0.1), link.send(1, 500, 0.0, 0.1)


def test_transfers_queue_on_their_prefill_replicas_link():
    # 1000 tokens x 1000 B per GPU at 1 GB/s: 1 ms on the wire + 1 ms latency; request 1 (500 tokens) waits
    # for the link (sent second), then sends for 0.5 ms.
    t0, t1 = _send_two(layerwise=False)
    assert (t0.request_id, t0.start_s, t0.end_s, t0.bytes) == (0, 0.1, pytest.approx(0.102), 2e6)
    assert (t1.request_id, t1.start_s, t1.end_s) == (1, pytest.approx(0.101), pytest.approx(0.1025))


def test_layerwise_transfer_ends_one_layer_after_the_prefill():
    # Layer 1 of 4 is ready at 25 ms; the link is faster than the prefill, so the last layer (0.25 ms of
    # sending) leaves when the prefill ends at 100 ms: 100.25 ms + 1 ms latency.
    t0, t1 = _send_two(layerwise=True)
    assert t0.start_s == pytest.approx(0.025) and t0.end_s == pytest.approx(0.10125)
    # Request 1 waits for the link until 100.25 ms, then sends its 0.5 ms: 100.75 ms + 1 ms latency.
    assert t1.start_s == pytest.approx(0.10025) and t1.end_s == pytest.approx(0.10175)


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("hold", [True, False])
def test_prefill_replica_holds_a_prompts_kv_until_its_transfer_ends(hold, fast_path):
    # Round cost model: 10 ms a step + 0.1 ms per prefill token. KV: 8 blocks of 16 tokens; a 100-token prompt
    # takes 7, so the prefill replica holds one prompt at a time. Link: 100 B per token, 1 MB/s, 1 ms latency.
    # A (0 ms): prefill 0-20 ms; its transfer 20-30 ms on the wire, ends at 31 ms. B (1 ms) waits for memory:
    # held, A's blocks come back at 31 ms, so B prefills 31-51 ms and is sent 51-61 ms (ends 62 ms); freed at
    # A's prefill end instead, B would prefill 20-40 ms, and its transfer would wait for A's (30-40, ends 41).
    replica = Replica(0, "prefill", make_parts(capacity_tokens=128, fast_path=fast_path))
    kv = replica.parts.policy.kv
    link = TransferLink(0, KVLink("slow", 1e6, 1e-3, "made up"), InstanceShape(100.0, 1, 4), False)
    if hold:
        replica.held = HeldUntilSent(link, kv)
    specs = specs_from([(0.0, 100, 1), (0.001, 100, 1)])
    (run,) = run_cluster([replica], make_router("round-robin", 1), specs)
    rows = run.result.requests.set_index("request_id")
    if hold:
        assert rows.scheduled_s.tolist() == pytest.approx([0.0, 0.031])
        assert rows.first_token_s.tolist() == pytest.approx([0.020, 0.051])
        assert [(t.request_id, t.start_s, t.end_s) for t in run.transfers] == [
            (0, pytest.approx(0.020), pytest.approx(0.031)), (1, pytest.approx(0.051), pytest.approx(0.062))]
        # the step at 31 ms found A's blocks back; at the end every block is free again
        steps = run.result.kv
        assert steps.allocated_tokens.tolist() == [112, 112]
        assert kv.usage().allocated_tokens == 0 and kv.num_holders() == 0
    else:
        assert rows.scheduled_s.tolist() == pytest.approx([0.0, 0.020]) and run.transfers is None


SMALL = SimConfig(num_requests=120, rate=6.0, prompt_len="uniform:64:2048", output_len="uniform:2:64", seed=4,
                  prefill_replicas=2, decode_replicas=2, router="least-outstanding", chunked_prefill=False)


@pytest.mark.parametrize("transfer", ["whole", "layerwise"])
def test_every_request_is_prefilled_transferred_and_decoded_once(transfer):
    res = simulate(SMALL.replace(kv_transfer=transfer))
    req, reps = res.requests, res.replicas
    assert len(req) == 120 and req.request_id.is_unique and (req.status == "finished").all()
    assert reps[reps.role == "prefill"].num_requests.sum() == 120
    assert reps[reps.role == "decode"].num_requests.sum() == 120
    assert res.summary()["kv_transfers"] == 120
    assert set(req.prefill_replica) <= {0, 1} and set(req.replica) <= {2, 3}
    # the decode pool never computes a prompt again: only the last prompt token, priced as a decode token
    decode_steps = res.steps[res.steps.replica >= 2]
    assert res.summary()["preemptions"] == 0 and decode_steps.num_prefill_tokens.sum() == 0
    # TTFT is queue + prefill + transfer + decode queue + first step
    parts = req.queue_s + req.prefill_s + req.transfer_s + req.decode_queue_s + req.first_step_s
    np.testing.assert_allclose(parts, req.ttft_s, rtol=1e-9, atol=1e-12)
    assert (req.transfer_s > 0).all() and (req.decode_queue_s >= 0).all()


def test_uncontended_transfer_takes_bytes_over_bandwidth_plus_latency():
    cfg = SMALL.replace(rate=0.5, arrival="constant", prefill_replicas=1, decode_replicas=1, kv_link="ib-hdr")
    res = simulate(cfg)
    per_gpu = res.meta["replica_meta"]["memory"]["kv_bytes_per_token"]
    link = get_kv_link("ib-hdr")
    expected = res.requests.prompt_tokens * per_gpu / link.bytes_per_s + link.latency_s
    np.testing.assert_allclose(res.requests.transfer_s, expected, rtol=1e-9)
    assert res.summary()["kv_transfer_bytes"] == pytest.approx(float((res.requests.prompt_tokens * per_gpu).sum()))


def test_arriving_kv_is_a_private_hit_until_a_preemption():
    kv = ArrivingKV(1024, block_size=16, max_model_len=512)
    req = Request(RequestSpec(0, 0.0, 100, 5))
    assert kv.prefix_hit(req) == 99                 # all but the last prompt token
    assert kv.can_allocate(req, 100, admission=True, cached_tokens=99)
    kv.allocate(req, 100, cached_tokens=99)
    assert kv.allocated_tokens(req) == 112          # the transferred KV takes this replica's memory
    kv.free(req)
    req.num_preemptions = 1
    assert kv.prefix_hit(req) == 0


@pytest.mark.parametrize("changes, message", [
    ({"prefill_replicas": 2}, "prefill-replicas and decode-replicas must both be positive integers (or both 0)"),
    ({"prefill_replicas": 1, "decode_replicas": 1, "replicas": 2}, "give prefill-replicas and decode-replicas, or "),
    ({"kv_transfer": "streamed"}, "kv_transfer must be one of whole, layerwise"),
])
def test_disaggregation_config_errors(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SimConfig(**changes)


def test_unknown_kv_link_lists_choices():
    with pytest.raises(ConfigError, match="unknown kv-link 'ib-xdr'; choose one of nvlink3, .*ib-ndr.*rdma:<Gb/s>"):
        simulate(SMALL.replace(kv_link="ib-xdr", num_requests=5))
    assert get_kv_link("rdma:800").bytes_per_s == 100e9


# ---- prefill/decode pools from a pools file ----
PD_POOLS = {"groups": [{"name": "prefill-h100", "role": "prefill", "count": 2, "gpu": "h100-sxm"},
                       {"name": "decode-a100", "role": "decode", "count": 1, "gpu": "a100-80gb", "tp": 2}]}


def _pools_file(tmp_path, data):
    import yaml
    path = tmp_path / "pools.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_pools_file_roles_make_a_heterogeneous_disaggregated_deployment(tmp_path):
    cfg = SMALL.replace(prefill_replicas=0, decode_replicas=0, pools=_pools_file(tmp_path, PD_POOLS))
    res = simulate(cfg)
    reps, req = res.replicas, res.requests
    assert reps[["group", "role", "gpu", "tp"]].values.tolist() == [
        ["prefill-h100", "prefill", "h100-sxm", 1], ["prefill-h100", "prefill", "h100-sxm", 1],
        ["decode-a100", "decode", "a100-80gb", 2]]
    assert (req.status == "finished").all() and res.summary()["kv_transfers"] == 120
    assert set(req.prefill_replica) == {0, 1} and set(req.replica) == {2}
    # one H100 sends its whole KV shard; the TP-2 decode instance has two NICs, but one sender uses one
    per_gpu = res.meta["replica_meta"]["memory"]["kv_bytes_per_token"]
    link = get_kv_link(SMALL.kv_link)
    assert res.summary()["kv_transfer_bytes"] == pytest.approx(float((req.prompt_tokens * per_gpu).sum()))
    assert (req.transfer_s >= req.prompt_tokens * per_gpu / link.bytes_per_s + link.latency_s - 1e-12).all()


def test_pools_file_without_roles_and_cli_flags_give_the_same_deployment(tmp_path):
    same = {"groups": [{"name": "prefill", "role": "prefill", "count": 2}, {"name": "decode", "role": "decode",
                                                                             "count": 2}]}
    by_file = simulate(SMALL.replace(prefill_replicas=0, decode_replicas=0, pools=_pools_file(tmp_path, same)))
    by_flags = simulate(SMALL)
    pd.testing.assert_frame_equal(by_file.requests, by_flags.requests, check_exact=True)


@pytest.mark.parametrize("groups, message", [
    ([{"role": "prefil"}], "group 1 (group1): role must be one of both, prefill, decode, got 'prefil'"),
    ([{"role": "prefill"}, {"role": "both"}], "groups with role both cannot join prefill/decode groups"),
    ([{"role": "prefill"}, {"role": "prefill"}], "a disaggregated deployment needs prefill and decode groups; "
                                                 "no group has role decode"),
    ([{"name": "p", "role": "prefill"}, {"name": "d", "role": "decode", "model": "llama-3.1-70b"}],
     "group d sets model 'llama-3.1-70b' but group p 'llama-3.1-8b': prefill and decode groups serve the same"),
])
def test_bad_pool_roles_are_one_line_errors(tmp_path, groups, message):
    path = _pools_file(tmp_path, {"groups": groups})
    with pytest.raises(ConfigError) as err:
        simulate(SimConfig(pools=path, num_requests=5))
    assert message in str(err.value) and str(err.value).startswith(path) and "\n" not in str(err.value)


def test_a_decode_instance_with_fewer_gpus_receives_over_fewer_nics(tmp_path):
    # Prefill on TP 2 (two GPUs, each holding half the KV), decode on TP 1: one NIC receives the whole prompt's
    # KV, so an uncontended transfer takes all of its bytes over one link plus the latency.
    groups = {"groups": [{"name": "p", "role": "prefill", "count": 1, "tp": 2},
                         {"name": "d", "role": "decode", "count": 1, "tp": 1}]}
    cfg = SMALL.replace(prefill_replicas=0, decode_replicas=0, pools=_pools_file(tmp_path, groups), rate=0.5,
                        arrival="constant", kv_link="ib-hdr")
    res = simulate(cfg)
    req = res.requests
    total = req.prompt_tokens * res.meta["replica_meta"]["memory"]["kv_bytes_per_token"] * 2
    link = get_kv_link("ib-hdr")
    np.testing.assert_allclose(req.transfer_s, total / link.bytes_per_s + link.latency_s, rtol=1e-9)
    assert res.summary()["kv_transfer_bytes"] == pytest.approx(float(total.sum()))
