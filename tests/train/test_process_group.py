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
