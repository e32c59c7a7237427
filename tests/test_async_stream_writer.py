"""AsyncStreamWriter: many coroutines writing over one WriteStream to a real primary process;
their writes travel in shared messages, each is answered on its own."""

from __future__ import annotations

import asyncio

import pytest

from kevo_repl.client.client import AsyncStreamWriter, SemiSync, WriteFailed
from kevo_repl.protocol.codec import Op

WRITERS = 32
PER_WRITER = 40


@pytest.mark.parametrize("applier", ["lmdb"])
def test_concurrent_coroutines_each_get_their_own_answer(cluster) -> None:
    primary = cluster.primary()

    async def main() -> list[tuple[int, int]]:
        async with AsyncStreamWriter(primary.address) as sw:

            async def writer(w: int) -> list[tuple[int, int]]:
                return [await sw.write([(Op.PUT, b"k%d-%d" % (w, i), b"v%d" % i),
                                        (Op.PUT, b"m%d-%d" % (w, i), b"")])
                        for i in range(PER_WRITER)]

            got = await asyncio.gather(*(writer(w) for w in range(WRITERS)))
            # a rejected write fails only itself, in the middle of others
            bad = sw.write([(Op.PUT, b"", b"empty key")])
            good = sw.write([(Op.DELETE, b"k0-0", b"")])
            results = await asyncio.gather(bad, good, return_exceptions=True)
            assert isinstance(results[0], WriteFailed)
            assert results[0].code.name == "INVALID_ARGUMENT"
            assert results[1] == (2 * WRITERS * PER_WRITER + 1,) * 2
            # a semi-sync write with no replica to wait for times out as asked, on its own
            with pytest.raises(WriteFailed, match="DEADLINE_EXCEEDED"):
                await sw.write([(Op.PUT, b"s", b"1")], SemiSync(wait_for=1, timeout_s=0.2))
            return [s for ws in got for s in ws]

    seqs = asyncio.run(main())
    # every write got its own two sequences, none shared, none skipped
    firsts = sorted(first for first, _ in seqs)
    assert firsts == list(range(1, 2 * WRITERS * PER_WRITER, 2))
    assert all(last == first + 1 for first, last in seqs)
    with primary.client() as c:
        assert c.get(b"k0-0") is None
        assert c.get(b"k3-7") == b"v7"
        assert c.get(b"m31-39") == b""
        assert c.get(b"s") == b"1"  # durable on the primary though no replica acknowledged
