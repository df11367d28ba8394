"""The planner's formulas and its CLI (the measured checks are in tests/parallel/test_plan_validation_*)."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest

from chatbaker_megatron.cli import main
from chatbaker_megatron.config.compose import compose
from chatbaker_megatron.config.model import ModelConfig
from chatbaker_megatron.config.parallel import ParallelConfig
from chatbaker_megatron.config.schema import validate
from chatbaker_megatron.model import sizes
from chatbaker_megatron.plan import activations as act
from chatbaker_megatron.plan import comm, memory, steptime, workload
from chatbaker_megatron.plan.assumptions import Assumptions
from chatbaker_megatron.plan.candidates import plan, workload_of

MODEL_7B = ModelConfig(  # MHA: ModelConfig's defaults are the tiny model's, with GQA
    num_layers=32,
    hidden_size=4096,
    num_attention_heads=32,
    num_query_groups=None,
    ffn_hidden_size=11008,
    vocab_size=50304,
)
WORK_7B = workload.Workload(
    model=MODEL_7B,
    vocab_size=50304,
    seq_length=2048,
    global_batch_size=2048,
    precision="bf16",
    train_tokens=1.4e12,
)
PRESETS = ("plm_1.3b_a100x256", "plm_7b_a100x256")


def test_padded_vocab_matches_the_model_builder():
    from chatbaker_megatron.model.llama import padded_vocab_size

    for tp in (1, 2, 4, 8):
        assert WORK_7B.padded_vocab(tp) == padded_vocab_size(50304, 128, tp)


@pytest.mark.parametrize("m,v,group", [(8, 2, 4), (6, 3, 4), (4, 1, 2), (12, 4, 8)])
def test_forward_order_is_megatrons_schedule_table(m, v, group):
    from megatron.core.pipeline_parallel.schedules import get_schedule_table

    assert list(workload.forward_order(m, v, group)) == get_schedule_table(m, v, group)


@pytest.mark.parametrize("pp,vpp,m", [(4, None, 8), (4, 2, 8), (8, 4, 16), (2, 2, 2), (4, None, 2)])
def test_warmup_is_megatrons(pp, vpp, m):
    from megatron.core.pipeline_parallel.schedules import get_pp_rank_microbatches

    par = ParallelConfig(pp=pp, vpp=vpp)
    for rank in range(pp):
        # get_pp_rank_microbatches reads only these attributes of its communicator.
        fake = types.SimpleNamespace(
            pp_group=types.SimpleNamespace(size=lambda: pp, rank=lambda r=rank: r),
            virtual_pipeline_model_parallel_size=vpp,
        )
        _total, _all, warmup, _rest = get_pp_rank_microbatches(
            m, vpp or 1, pp, p2p_communicator=fake
        )
        assert workload.warmup_forwards(par, m, rank) == warmup


def test_inflight_microbatches():
    # 1F1B: rank r holds p - r micro-batches (Narayanan et al. 2021, section 2.2.1).
    par = ParallelConfig(pp=4)
    assert [sum(workload.inflight_per_chunk(par, 16, r)) for r in range(4)] == [4, 3, 2, 1]
    # Fewer micro-batches than stages: all of them.
    assert sum(workload.inflight_per_chunk(par, 2, 0)) == 2
    # Interleaved, rank 0: (p-1)*2 + (v-1)*p + 1 chunk-micro-batches of L/(pv) layers,
    # i.e. L * (1 + (p-1)/(pv)) layers (Korthikanti et al. 2022, section 4.2.3).
    p, v = 4, 2
    live = workload.inflight_per_chunk(ParallelConfig(pp=p, vpp=v), 16, 0)
    assert sum(live) == (p - 1) * 2 + (v - 1) * p + 1
    assert sum(live) / (p * v) == pytest.approx(1 + (p - 1) / (p * v))


def test_layer_activations_closed_form():
    """Fused norm, bf16, MHA, TP1: sb(20h + 10f + 8 + 4a) + 8sd bytes per layer (docs/performance.md)."""
    s, b = 2048, 2
    model = MODEL_7B
    h, f, a, d = model.hidden_size, model.ffn_hidden_size, model.num_attention_heads, model.head_dim
    shape = act.Shape(seq_length=s, micro_batch_size=b)
    assert act.layer_bytes(model, shape) == s * b * (20 * h + 10 * f + 8 + 4 * a) + 8 * s * d


def test_tp_and_sp_shard_what_korthikanti_says():
    """With TP the norm and linear inputs stay replicated; SP shards them too."""
    s, b, h, t = 2048, 1, 4096, 4
    base = act.Shape(seq_length=s, micro_batch_size=b)
    tp = dataclasses.replace(base, tp=t)
    sp = dataclasses.replace(tp, sp=True)
    one, with_tp, with_sp = (act.layer_bytes(MODEL_7B, x) for x in (base, tp, sp))
    rope = 8 * s * MODEL_7B.head_dim
    replicated = 4 * 2 * s * b * h + 2 * 4 * s * b  # 2 norm inputs, 2 linear inputs, 2 rstd
    assert with_tp - rope == replicated + (one - rope - replicated) // t
    assert with_sp - rope == (one - rope) // t


def test_recompute_keeps_less():
    shape = act.Shape(seq_length=2048, micro_batch_size=1, tp=2, sp=True)
    none, selective, full = (
        act.layer_bytes(MODEL_7B, shape, r) for r in ("none", "selective", "full")
    )
    lse = 4 * 2048 * MODEL_7B.num_attention_heads // 2
    assert none - selective == lse - 4
    assert full == 2 * 2048 * 4096 // 2
    assert act.korthikanti_gpt_layer_bytes(MODEL_7B, shape, "full") == full


def test_model_state_bytes_per_param():
    par = ParallelConfig(tp=8)
    assume = Assumptions()
    plain = memory.rank_memory(WORK_7B, par, 32, 0, assume)
    zero1 = memory.rank_memory(
        WORK_7B, dataclasses.replace(par, distributed_optimizer=True), 32, 0, assume
    )
    n = plain.params
    assert (plain.weights + plain.grads + plain.optimizer) == 18 * n
    # ZeRO-1: the 16-bit weights and fp32 grads fill DDP's padded buffer (buckets
    # end at multiples of lcm(DP, 128)); a DP rank's shard of it excludes the padding.
    padded = zero1.grads // 4
    assert zero1.weights == 2 * padded
    assert 0 <= padded - n < 1e-6 * n
    assert 12 * (n - (padded - n)) // 32 <= zero1.optimizer <= 12 * padded // 32


def test_buffer_layout_buckets_and_shards():
    # Reverse order, starts aligned to 64, a bucket closes once it holds >= 200 elements.
    layout = memory.buffer_layout((100, 64, 150), 2, 200, True)
    assert layout.params == ((0, 150), (192, 256), (256, 356))
    assert layout.buckets == ((0, 256), (256, 384))
    # DP rank 0 owns [0, 128) + [256, 320), rank 1 [128, 256) + [320, 384).
    assert memory.optimizer_shard_numels(layout, 2) == (128 + 64, 22 + 64 + 36)
    plain = memory.buffer_layout((100, 64, 150), 2, None, False)
    assert plain.buckets == ((0, 314),)


def test_tp_volume_per_layer():
    par = ParallelConfig(tp=2, micro_batch_size=1)
    x = 2 * 2048 * 4096
    assert comm.tp_microbatch(WORK_7B, par, 1, False, False) == {"all_reduce": 4 * x}
    sp = comm.tp_microbatch(WORK_7B, dataclasses.replace(par, sp=True), 1, False, False)
    assert sp == {"all_gather": 6 * x, "reduce_scatter": 4 * x, "all_reduce": 0}


def test_distributed_optimizer_buffer_padding():
    # Each param start aligned to 64 elements, the buffer end to lcm(DP, 128).
    assert comm.grad_buffer_numel([100, 64, 1], dp=2, distributed_optimizer=True) == 256
    assert comm.grad_buffer_numel([100, 64, 1], dp=3, distributed_optimizer=True) == 384
    assert comm.grad_buffer_numel([100, 64, 1], dp=2, distributed_optimizer=False) == 165


@pytest.mark.parametrize("pp,vpp", [(4, None), (4, 2), (8, 4)])
def test_step_bubble_is_narayanan(pp, vpp):
    cluster = compose(["experiment=plm_7b_a100x256"]).cluster
    par = ParallelConfig(tp=2, sp=True, pp=pp, vpp=vpp, micro_batch_size=1)
    dp = 256 // (2 * pp)
    t = steptime.step_time(WORK_7B, par, dp, cluster, Assumptions())
    m = workload.num_microbatches(WORK_7B, par, dp)
    ideal = t.compute + t.tp_comm + t.pp_comm
    assert t.bubble == pytest.approx(steptime.bubble_fraction(pp, vpp, m) * ideal)


@pytest.mark.parametrize("experiment", PRESETS)
def test_plan_ranks_valid_fitting_layouts(experiment):
    cfg = compose([f"experiment={experiment}"])
    candidates = plan(cfg)
    assert candidates[0].fits
    assert sum(c.configured for c in candidates) == 1
    times = [c.time.total for c in candidates if c.fits]
    assert times == sorted(times)
    for c in candidates[:50]:
        validate(dataclasses.replace(cfg, parallel=c.parallel))
    best = candidates[0]
    work = workload_of(cfg)
    flops = sizes.model_flops_per_token(
        cfg.model, cfg.train.seq_length, work.padded_vocab(best.parallel.tp)
    )
    peak = cfg.cluster.world_size * cfg.cluster.device.peak_tflops * 1e12
    assert best.mfu == pytest.approx(flops * best.tokens_per_s / peak)
    assert best.mfu < Assumptions().compute_efficiency


def test_cli_json(capsys):
    assert main(["plan", "experiment=plm_1.3b_a100x256", "--json", "--top", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["searched"] >= data["fitting"] > 0
    ranks = [c["rank"] for c in data["candidates"]]
    assert ranks[:3] == [1, 2, 3]
    assert any(c["configured"] for c in data["candidates"])
    for c in data["candidates"]:
        mem, step = c["memory_bytes"], c["step_seconds"]
        parts = ("weights", "grads", "optimizer", "activations", "transient", "allowance")
        assert sum(mem[k] for k in parts) == mem["total"]
        assert sum(v for k, v in step.items() if k != "total") == pytest.approx(step["total"])
        assert c["overrides"][0] == "experiment=plm_1.3b_a100x256"
        assert f"parallel.tp={c['layout']['tp']}" in c["overrides"]


def test_cli_table(capsys):
    assert main(["plan", "experiment=plm_7b_a100x256", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "chosen: experiment=plm_7b_a100x256 parallel.tp=" in out
    assert "why not otherwise" in out
    assert "the configured layout ranks #" in out or "1*" in out


def test_cli_plans_a_preset_on_another_cluster(capsys):
    # The preset fixes parallel.dp=128; on 16 nodes that layout is invalid, the plan is not.
    args = ["plan", "experiment=plm_7b_a100x256", "cluster.nodes=16", "--json", "--top", "1"]
    assert main(args) == 0
    best = json.loads(capsys.readouterr().out)["candidates"][0]["layout"]
    assert best["tp"] * best["pp"] * best["dp"] == 128


def test_cli_reports_config_errors(capsys):
    assert main(["plan", "model.vocab_size=512", "train.seq_length=100000"]) == 2
    assert "exceeds model.max_position_embeddings" in capsys.readouterr().err
