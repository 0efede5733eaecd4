"""The device emulator (itnet_ext.emulate, csrc/emulate/): its control kernels, each with a
deliberate bug that a check must catch (and a correct twin where it must report nothing), the
thread orders, the settings, and the emulated ops against the CPU kernels.

A control test that expects a report runs with the check on; where the check can be switched
off (the race checks, the shared-memory poison), the same test also shows that without it the
bug goes unreported, so the test fails if the detector is switched off or broken. Skipped in a
build without the emulator (ITNET_EMULATE=1 builds it; CI's emulate stage).
"""
import re

import pytest
import torch

from cuda_helpers import emulation_ready

pytestmark = pytest.mark.skipif(not emulation_ready(),
                                reason="needs the device emulator (ITNET_EMULATE=1 build)")

if emulation_ready():
    from itnet_ext import emulate, functional


def needs_instrumentation():
    if not emulate.instrumented():
        pytest.skip("the race and shared-bounds checks need the instrumented build "
                    "(this is the ASan build)")


ORDERS = ["forward", "reverse", "shuffle"]


# --------------------------------------------------------------------------------------------
# correct kernels: nothing reported, the right values in every thread order
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ORDERS)
def test_correct_controls_in_every_order(order):
    with emulate.use(order=order, seed=3):
        n = torch.arange(64, dtype=torch.float32)
        assert torch.equal(emulate.control("neighbour_ok"), (n + 1) % 64 + 1)
        lane, base = n % 32, n - n % 32
        assert torch.equal(emulate.control("warp_neighbour_ok"), base + (lane + 1) % 32 + 1)
        want = torch.tensor([sum(range(32)), sum(range(32, 64))], dtype=torch.float32)
        assert torch.equal(emulate.control("warp_sum_ok"), want.repeat_interleave(32))
        k = torch.arange(128, dtype=torch.float32)
        assert torch.equal(emulate.control("cp_async_ok"), k / 4)
        assert torch.equal(emulate.control("big_dynamic_ok"), torch.full((32,), 3.0))


def test_mma_and_ldmatrix_follow_the_ptx_fragment_layouts():
    """ldmatrix (A row-major, B k-major with .trans) and mma.m16n8k16 give A @ B exactly
    (small integers in half)."""
    e = torch.arange(256)
    A = ((e * 7) % 11 - 5).float().reshape(16, 16)
    f = torch.arange(128)
    B = ((f * 5) % 9 - 4).float().reshape(16, 8)
    out = emulate.control("mma_m16n8k16").reshape(16, 8)
    assert torch.equal(out, A @ B)


# --------------------------------------------------------------------------------------------
# deliberate bugs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, message", [
    ("missing_syncthreads", r"shared-memory race: thread \d+ \(warp \d, lane \d+\) (reads|writes) "
                            r"4 bytes at shared 'dynamic \(extern\) shared memory'"),
    ("missing_syncwarp", r"shared-memory race: .* shared 's' .* in the same barrier interval"),
    ("write_write_race", r"shared-memory race: thread \d+ .* writes 4 bytes at shared 's' .* "
                         r"wrote in the same barrier interval"),
])
@pytest.mark.parametrize("order", ORDERS)
def test_race_is_reported(name, message, order):
    needs_instrumentation()
    with emulate.use(order=order, seed=11, race_check=True):
        with pytest.raises(RuntimeError, match=message):
            emulate.control(name)


def test_missing_barrier_is_a_mismatch_without_the_race_check():
    """With the race check off, the missing barrier still shows: a wrong result in each
    order (poisoned shared memory read before the neighbour's write, or a stale value)."""
    want = (torch.arange(64) + 1) % 64 + 1
    for order in ORDERS:
        with emulate.use(order=order, seed=5, race_check=False):
            got = emulate.control("missing_syncthreads")
        assert not torch.equal(got, want.float()), order
    # and the race checks are what reports it
    with emulate.use(race_check=False):
        emulate.control("write_write_race")  # no error without the detector


@pytest.mark.parametrize("name, message", [
    ("static_out_of_bounds", r"thread 32 \(warp 1, lane 0\) writes 4 bytes at shared memory "
                             r"outside every allocation \(byte 128 of 's', which has 128\)"),
    ("dynamic_out_of_bounds", r"thread 31 .* writes 4 bytes at shared memory outside every "
                              r"allocation \(byte 124 of 'dynamic \(extern\) shared memory', "
                              r"which has 124\)"),
])
def test_shared_index_out_of_range_is_reported(name, message):
    needs_instrumentation()
    with pytest.raises(RuntimeError, match=message + ".*index out of range"):
        emulate.control(name)
    with emulate.use(race_check=False):
        emulate.control(name)  # no error without the detector


def test_divergent_shuffle_is_reported():
    with pytest.raises(RuntimeError, match=r"divergent warp collective: lanes of warp 0 wait at "
                                           r"__shfl_xor_sync with mask 0xffffffff, but lane 16 "
                                           r"of that mask waits at __syncthreads"):
        emulate.control("divergent_shuffle")


def test_barrier_not_reached_by_every_thread_is_reported():
    with pytest.raises(RuntimeError, match=r"__syncthreads reached by threads 0-31, but threads "
                                           r"32-63 have exited"):
        emulate.control("partial_barrier")


def test_shared_memory_is_poisoned():
    """Shared memory nobody wrote reads as NaN (0xFF bytes); a cp.async read before its
    wait sees the poison, not the copy; with poisoning off, neither is NaN."""
    assert torch.isnan(emulate.control("uninitialized_shared")).all()
    assert torch.isnan(emulate.control("missing_cp_async_wait")).all()
    with emulate.use(poison_shared=False, race_check=False):
        emulate.control("cp_async_ok")  # leaves finite values in the block's memory
        assert not torch.isnan(emulate.control("missing_cp_async_wait")).any()


@pytest.mark.parametrize("name, message", [
    ("too_many_threads", r"invalid launch: 2048 threads per block"),
    ("big_dynamic_without_attribute",
     r"65536 bytes of dynamic shared memory, more than the 49152 allowed \(above 48 KiB a kernel "
     r"needs cudaFuncSetAttribute"),
])
def test_launch_limits(name, message):
    with pytest.raises(RuntimeError, match=message):
        emulate.control(name)


# --------------------------------------------------------------------------------------------
# settings, counters, the dispatch mode
# --------------------------------------------------------------------------------------------
def test_settings_roundtrip_and_errors():
    before = emulate.settings()
    with emulate.use(order="shuffle", seed=7, race_check=False, poison_shared=False):
        assert emulate.settings() == {"order": "shuffle", "seed": 7, "race_check": False,
                                      "poison_shared": False}
    assert emulate.settings() == before
    with pytest.raises(ValueError, match="order: expected one of"):
        emulate.configure(order="backwards")
    with pytest.raises(RuntimeError, match="name: no control kernel \"nope\""):
        emulate.control("nope")


def test_dispatch_mode_runs_the_emulated_kernels():
    """Within emulate_cuda the sparse op runs emulated CUDA kernels (counted launches and
    checked shared accesses), agreeing with the CPU kernels to rounding in float64; outside
    it, nothing is launched."""
    g = torch.Generator().manual_seed(0)
    B, H, N, M, S, Dk, Dv = 2, 3, 21, 33, 9, 8, 5
    q = torch.randn(B, H, N, Dk, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, H, M, Dk, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, H, M, Dv, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, M, (B, N, S), generator=g)
    emulate.reset_stats()
    cpu = functional.sparse_integral_transform(q=q, k=k, v=v, idx=idx)
    gc = torch.autograd.grad(cpu.square().sum(), (q, k, v))
    assert emulate.stats()["launches"] == 0
    with emulate.emulate_cuda():
        emu = functional.sparse_integral_transform(q=q, k=k, v=v, idx=idx)
        ge = torch.autograd.grad(emu.square().sum(), (q, k, v))
    st = emulate.stats()
    assert st["launches"] >= 2 and st["blocks"] > 0 and st["switches"] > 0
    if emulate.instrumented():
        assert st["shared_accesses"] > 0
    assert (emu - cpu).abs().max() <= 1e-12
    for a, b in zip(ge, gc):
        assert (a - b).abs().max() <= 1e-12


def test_error_names_the_kernel_and_block():
    """A launch error names the kernel and the file of the launch."""
    with pytest.raises(RuntimeError) as e:
        emulate.control("too_many_threads")
    assert re.search(r"emulated CUDA kernel warp_sum_kernel \(.*controls\.cu\), grid \(1, 1, 1\)",
                     str(e.value)), str(e.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flash_kernels_run_their_bodies(dtype):
    """A float16 / bfloat16 dense call runs the flash (tensor-core) kernels for real under the
    emulator: their bodies touch shared memory (an empty body, e.g. one compiled out by an
    architecture guard, would not) and the output matches the float64 reference to half
    precision."""
    from itnet_ext import reference
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, n, 64, generator=g, dtype=torch.float64) for n in (40, 50, 50))
    emulate.reset_stats()
    with emulate.emulate_cuda():
        out = functional.integral_transform(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype))
    st = emulate.stats()
    assert st["launches"] == 1
    if emulate.instrumented():
        # the Q, K, V tiles alone: 40 + 2 * 50 rows of 64 16-bit values per head
        assert st["shared_accesses"] >= 2 * (40 + 100) * 64
    ref = reference.integral_transform(q=q.to(dtype).double(), k=k.to(dtype).double(),
                                       v=v.to(dtype).double())
    tol = 2e-3 if dtype == torch.float16 else 2e-2
    assert (out.double() - ref).abs().max() <= tol
