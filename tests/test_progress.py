"""Batch-log progress lines (mixlora.progress) and the routing-health numbers (mixlora.train.routing_health).

References are hand-computed: the documented line formats filled in by hand, entropies in bits worked out on
paper (H/log E is the same in any base), and selection counts tallied by hand from literal index tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mixlora import LoRALinear, MixLoRALinear
from mixlora.progress import TaskProgress, check_progress, eval_line, format_duration, resolve_progress, train_line
from mixlora.train.metrics import wandb_values
from mixlora.train.routing_health import RoutingCounter, group_health, pool_health, routing_summary
from mixlora.train.settings import ConfigError, TrainerSettings


# ---------------------------------------------------------------------------------------------- lines
class Stream:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_auto_is_a_bar_only_when_stdout_and_stderr_are_terminals():
    assert resolve_progress("auto", streams=(Stream(True), Stream(True))) == "bar"
    assert resolve_progress("auto", streams=(Stream(False), Stream(True))) == "lines"  # python train.py > log
    assert resolve_progress("auto", streams=(Stream(True), Stream(False))) == "lines"
    assert resolve_progress(True, streams=(Stream(False), Stream(False))) == "lines"  # the old boolean: auto
    assert resolve_progress(False) == "none" and resolve_progress("bar", streams=(Stream(False),)) == "bar"
    with pytest.raises(ValueError, match=r"progress='fancy' is not a valid option; choose one of 'auto', 'bar'"):
        check_progress("fancy")


def test_train_line_matches_the_documented_example():
    # 120 of 500 steps in 361 s: 380 left at 361/120 s each = 1143.17 s = 0:19:03
    assert train_line(120, 500, 2.34123, 9.8e-4, 3210.4, 361.0, 120) == (
        "step 120/500 (24%) | loss 2.3412 | lr 9.8e-04 | 3,210 tok/s | elapsed 0:06:01 | ETA 0:19:03")
    # Resumed at step 100: 20 steps in this process took 60 s, so 380 left take 1140 s (not 380 x 361/120).
    assert train_line(120, 500, 1.0, 1e-3, 10.0, 60.0, 20).endswith("elapsed 0:01:00 | ETA 0:19:00")
    assert train_line(499, 500, 1.0, 1e-3, 10.0, 10.0, 499, "x").endswith(
        "(99%) | loss 1.0000 | lr 1.0e-03 | 10 tok/s | elapsed 0:00:10 | ETA 0:00:00 | x")
    assert format_duration(26 * 3600 + 5) == "26:00:05" and format_duration(None) == "?"


def test_eval_lines_every_interval_and_at_the_end():
    lines, now = [], [100.0]
    with TaskProgress("mme", 2374, 100, "lines", every_s=30, emit=lines.append, clock=lambda: now[0]) as p:
        for t, n in ((10, 8), (35, 8), (50, 8), (70, 8), (75, 8)):
            now[0] = 100.0 + t
            p.update(n)
    # A line at t=35 (>= 30 s after the start), the next at t=70 (35 s later), then the close at t=75:
    # 116 done, 16 of them here in 35 s -> 0.457 ex/s, 2258 left -> 4939.4 s = 1:22:19.
    assert lines == ["mme: 116/2374 examples | 0.5 ex/s | ETA 1:22:19",
                     "mme: 132/2374 examples | 0.5 ex/s | ETA 1:21:44",  # 32 in 70 s: 2242 x 70 / 32 = 4904.4 s
                     "mme: 140/2374 examples | 0.5 ex/s | ETA 1:09:49"]  # 40 in 75 s: 2234 x 75 / 40 = 4188.75 s
    quiet: list[str] = []
    with TaskProgress("pope", 3, 0, "lines", every_s=0, emit=quiet.append, clock=lambda: 4.0) as p:
        p.update(3)
    assert quiet == ["pope: 3/3 examples | 0.0 ex/s | ETA ?"]  # no time passed: no rate, and no second line
    silent: list[str] = []
    with TaskProgress("pope", 3, 0, "none", emit=silent.append) as p:
        p.update(3)
    assert silent == []


def test_trainer_progress_setting_and_the_progress_bar_alias():
    assert TrainerSettings().progress_mode == "auto"
    assert TrainerSettings(progress_bar=False).progress_mode == "lines"  # no bar, but a batch log still reads
    assert TrainerSettings(progress_bar=True).progress_mode == "auto"
    assert TrainerSettings(progress="none", progress_bar=False).progress_mode == "none"
    with pytest.raises(ConfigError, match=r"trainer\.progress='ascii' is not a valid option"):
        TrainerSettings.coerce({"progress": "ascii"})
    with pytest.raises(ConfigError, match=r"progress_bar=false contradicts trainer\.progress=bar"):
        TrainerSettings(progress="bar", progress_bar=False)
    with pytest.raises(ConfigError, match=r"progress_bar must be true, false or null, got 'yes'"):
        TrainerSettings(progress_bar="yes")


def test_wandb_gets_the_routing_values_flattened():
    record = {"step": 3, "loss": 1.5, "routing": {"q_proj": {"used_a": 0.5, "entropy_b": 0.25}}}
    assert wandb_values(record) == {"loss": 1.5, "routing/q_proj/used_a": 0.5, "routing/q_proj/entropy_b": 0.25}


# ---------------------------------------------------------------------------------------------- routing health
def test_pool_health_against_hand_computed_entropies():
    # [3, 1, 0, 0]: p = (3/4, 1/4); H = 0.75 log2(4/3) + 0.25 log2(4) = 0.311278 + 0.5 = 0.811278 bits; / log2(4)
    used, entropy = pool_health([3, 1, 0, 0])
    assert used == 0.5 and entropy == pytest.approx(0.811278 / 2, abs=1e-6)
    assert pool_health([2, 2, 2, 2]) == (1.0, pytest.approx(1.0))  # uniform
    assert pool_health([5, 0, 0, 0]) == (0.25, 0.0)  # collapsed onto one factor
    assert pool_health([1, 1, 0, 0]) == (0.5, pytest.approx(0.5))  # 1 bit of 2
    assert pool_health([7]) == (1.0, 1.0)  # E = 1: nothing to spread over
    with pytest.raises(ValueError, match="at least one selection"):
        pool_health([0, 0])


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = MixLoRALinear(nn.Linear(8, 8), num_factors=4, rank=2, alpha=4.0)
        self.down_proj = MixLoRALinear(nn.Linear(8, 8), num_factors=4, rank=2, alpha=4.0)


def select(layer: MixLoRALinear, idx_a, idx_b) -> None:
    layer.last_selection = (torch.tensor(idx_a), torch.tensor(idx_b))


class TwoRanks:
    """all_reduce_sum as two ranks that counted the same micro-batches (every count doubles)."""

    def all_reduce_sum(self, values):
        return [2 * v for v in values]


def test_routing_counter_groups_layers_by_module_kind():
    model = nn.ModuleList([Block(), Block()])  # layers 0.q_proj, 0.down_proj, 1.q_proj, 1.down_proj
    counter = RoutingCounter.of(model, torch.device("cpu"))
    for _ in range(2):  # two micro-batches of 2 instances, r = 2 (the same selections twice)
        select(model[0].q_proj, [[0, 1], [0, 1]], [[0, 1], [2, 3]])
        select(model[1].q_proj, [[0, 1], [0, 2]], [[0, 1], [0, 1]])
        select(model[0].down_proj, [[3, 2], [3, 2]], [[3, 0], [3, 0]])
        select(model[1].down_proj, [[3, 2], [3, 2]], [[3, 0], [3, 0]])
        counter.add()
    counter.add()  # no forward since: nothing new is counted (selections are cleared once read)
    # 0.q_proj A [2,2,0,0]: used 0.5, H 1 bit / 2 = 0.5;   B [1,1,1,1]: 1, 1
    # 1.q_proj A [2,1,1,0]: used 0.75, H = 0.5*1 + 2*0.25*2 = 1.5 bits / 2 = 0.75;   B [2,2,0,0]: 0.5, 0.5
    # down_proj (both layers) A [0,0,2,2], B [2,0,0,2]: 0.5, 0.5
    expected = {"q_proj": {"used_a": 0.625, "used_b": 0.75, "entropy_a": 0.625, "entropy_b": 0.75},
                "down_proj": {"used_a": 0.5, "used_b": 0.5, "entropy_a": 0.5, "entropy_b": 0.5}}
    assert counter.counts.tolist()[:4] == [4, 4, 0, 0]  # 0.q_proj's A pool: 2 micro-batches x [2, 2, 0, 0]
    assert counter.read(TwoRanks()) == expected  # fractions do not change when every count doubles
    assert int(counter.counts.sum()) == 0  # a new window
    assert routing_summary(expected) == "pool used min A 0.50 B 0.50"
    select(model[0].q_proj, [[0, 3]], [[1, 2]])
    assert counter.read() == {}  # selections not yet added are not in the window
    counter.add()
    assert counter.read() == {"q_proj": {"used_a": 0.5, "used_b": 0.5, "entropy_a": 0.5, "entropy_b": 0.5}}


def test_no_routing_counter_without_mixlora_layers():
    model = nn.Sequential(LoRALinear(nn.Linear(8, 8), rank=2, alpha=4.0))
    assert RoutingCounter.of(model, torch.device("cpu")) is None


def test_group_health_averages_per_layer_values_not_the_union():
    # Two q_proj layers each stuck on two (different) factors of 4: the union covers the pool, each layer half.
    health = group_health([("0.q_proj", [1, 1, 0, 0], [1, 1, 0, 0]), ("1.q_proj", [0, 0, 1, 1], [0, 0, 1, 1])])
    assert health["q_proj"]["used_a"] == 0.5
    assert health["q_proj"]["entropy_a"] == pytest.approx(math.log(2) / math.log(4))  # = 0.5, not the union's 1
