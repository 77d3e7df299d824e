"""migmcut.distributed: the one process-group helper record and train share (the torchrun runs
themselves are in test_record_processes.py and test_train.py)."""

import torch

from migmcut import distributed


def test_a_plain_run_is_rank_0_of_1_and_makes_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = distributed.init()
    assert (dist.rank, dist.world, dist.main, dist.created) == (0, 1, True, False)
    assert dist.broadcast({"a": 1}) == {"a": 1} and dist.gather(3) == [3]
    dist.barrier()
    dist.close()
    assert not torch.distributed.is_initialized()


def test_ranks_get_their_own_seed_and_gpu():
    assert [distributed.Dist(rank=r, world=3).seed(10) for r in range(3)] == [10, 11, 12]
    assert distributed.Dist(rank=1, world=2, local_rank=1).device("cpu") == torch.device("cpu")
    assert distributed.Dist().device("cuda:0") == torch.device("cuda:0")  # an explicit index is kept


def test_env_rank_reads_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    assert distributed.env_rank() == 3
    monkeypatch.delenv("RANK")
    assert distributed.env_rank() == 0
