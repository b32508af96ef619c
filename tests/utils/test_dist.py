import torch
import torch.distributed as dist

from mask2former.utils import dist as dist_utils


def test_collectives_use_the_current_cuda_device_under_nccl(monkeypatch):
    monkeypatch.setattr(dist_utils, "is_dist_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: dist.Backend.NCCL)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert dist_utils.collective_device() == torch.device("cuda", 3)


def test_collectives_stay_on_the_cpu_without_nccl(monkeypatch):
    assert dist_utils.collective_device() == torch.device("cpu")  # not distributed
    monkeypatch.setattr(dist_utils, "is_dist_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: dist.Backend.GLOO)
    assert dist_utils.collective_device() == torch.device("cpu")


def test_all_reduce_mean_divides_the_sum_and_keeps_the_input(monkeypatch):
    monkeypatch.setattr(dist_utils, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist_utils, "collective_device", lambda: torch.device("cpu"))
    other_rank = torch.tensor([3.0, 5.0])

    def fake_all_reduce(tensor, op):  # what a second rank holding `other_rank` would produce
        assert op == dist.ReduceOp.SUM
        tensor.add_(other_rank)

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    mine = torch.tensor([1.0, 1.0])
    assert torch.equal(dist_utils.all_reduce_mean(mine), torch.tensor([2.0, 3.0]))
    assert torch.equal(mine, torch.tensor([1.0, 1.0]))
