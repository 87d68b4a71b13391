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


def _kernels_pick(address: str) -> int:
    """The port the kernel gives a bind to port 0 at `address` (a gloo listener's, another free_port's)."""
    import socket

    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def test_free_port_is_held_against_other_binds_yet_the_ranks_can_listen_there():
    """Two test workers launch runs at once: a port free_port had merely released was the kernel's to give the
    other worker's next bind to port 0 (its free_port, a gloo listener) before rank 0 listened, and that run stopped
    with "address in use". Now no bind to port 0 and no plain bind gets a named port; the ranks' listeners do."""
    import errno
    import socket

    import torch.distributed as dist

    from llmasr.train.process_group import free_port

    named = {free_port() for _ in range(200)}
    # the kernel picks among ~14000 ports: released ones would be handed out about 8 times in 600 binds
    assert not named & {_kernels_pick("127.0.0.1") for _ in range(600)}
    port = named.pop()
    with socket.socket() as s, pytest.raises(OSError) as taken:
        s.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE
    with socket.create_server(("", port)):  # llmasr.launched_ranks' meeting: rank 0 listens at MASTER_PORT
        pass
    store = dist.TCPStore("127.0.0.1", named.pop(), 1, is_master=True)  # the process group's rendezvous
    store.set("rank0", "here")
    assert store.get("rank0") == b"here"


def test_free_port_is_held_against_binds_to_the_nodes_other_addresses():
    """gloo listens at the address the host name resolves to (a node's own IP; 127.0.1.1 on a Debian/Ubuntu node),
    not 127.0.0.1: a TIME_WAIT on 127.0.0.1 alone left the named port to another process's gloo listener there, which
    then held it against rank 0's store on every address. 127.0.1.1 stands for such an address: all of 127/8 is
    this host's on Linux."""
    from llmasr.train.process_group import free_port

    named = {free_port() for _ in range(200)}
    assert not named & {_kernels_pick("127.0.1.1") for _ in range(600)}
