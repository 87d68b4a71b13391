import pytest

from llmasr.train.process_group import cpu_threads_per_rank


@pytest.mark.parametrize(
    ("environ", "cores", "want"),
    [
        ({"LOCAL_SIZE": "2"}, 2, 1),  # deepspeed --num_gpus 2 on a 2-core machine
        ({"LOCAL_WORLD_SIZE": "4"}, 16, 4),  # torchrun --nproc_per_node 4
        ({"LOCAL_SIZE": "8"}, 4, 1),  # more ranks than cores: never 0
        ({"LOCAL_SIZE": "1"}, 8, None),  # one rank: torch's default
        ({}, 8, None),  # plain `llmasr train`
        ({"LOCAL_SIZE": "2", "OMP_NUM_THREADS": "3"}, 2, None),  # the user's setting wins
    ],
)
def test_cpu_ranks_split_the_cores_of_their_node(environ, cores, want):
    assert cpu_threads_per_rank(environ, cpu_count=cores) == want


def test_deepspeed_s_collectives_leave_no_deprecation_warning():
    """DeepSpeed's ZeRO collectives call torch.distributed.all_gather_into_tensor and reduce_scatter_tensor, which
    torch deprecates: every rank printed torch's FutureWarning, and again later in the run, a warning no user can act
    on. Others still show."""
    import warnings

    import torch

    from llmasr.train.process_group import init_distributed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        init_distributed()
        out = torch.zeros(2 * torch.distributed.get_world_size())
        torch.distributed.all_gather_into_tensor(out, torch.ones(2))
        torch.distributed.reduce_scatter_tensor(torch.zeros(2), torch.ones(2 * torch.distributed.get_world_size()))
        warnings.warn("a warning of llmasr's own", FutureWarning, stacklevel=1)
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "_tensor` is deprecated" in m] and "a warning of llmasr's own" in said, said
