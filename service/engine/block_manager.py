"""Hands out the KV cache's blocks: allocation, reference counts for beams that share a prefix,
copy-on-write before a shared block is written, and freeing."""

from __future__ import annotations

from model.paged import SCRATCH_BLOCK


class BlockManager:
    """Blocks 1..num_blocks-1 of the pool (block 0 is scratch), each with a reference count."""

    def __init__(self, num_blocks: int, block_size: int):
        assert num_blocks >= 2, "the cache needs the scratch block and at least one more"
        self.block_size = block_size
        self.num_blocks = num_blocks - 1  # usable
        assert SCRATCH_BLOCK == 0, "block 0 is never handed out"
        self._free = list(range(num_blocks - 1, 0, -1))  # a stack
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, num_positions: int) -> int:
        return -(-num_positions // self.block_size)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self._free)

    def allocate(self, num_blocks: int) -> list[int]:
        assert self.can_allocate(num_blocks), "allocate() without can_allocate()"
        blocks = [self._free.pop() for _ in range(num_blocks)]
        for b in blocks:
            self._refs[b] = 1
        return blocks

    def share(self, table: list[int]) -> list[int]:
        """A second owner of the same blocks (a beam forking from its parent)."""
        for b in table:
            self._refs[b] += 1
        return list(table)

    def free(self, table: list[int]) -> None:
        for b in table:
            assert self._refs[b] > 0, f"block {b} freed twice"
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(b)
        table.clear()

    def blocks_to_grow(self, table: list[int], num_positions: int) -> int:
        """New blocks needed so `table` covers `num_positions`, counting a copy-on-write."""
        needed = max(0, self.blocks_for(num_positions) - len(table))
        last = (num_positions - 1) // self.block_size
        if last < len(table) and self._refs[table[last]] > 1:
            needed += 1  # the block written next is shared: it will be copied
        return needed

    def grow(self, table: list[int], num_positions: int) -> tuple[int, int] | None:
        """Make `table` cover `num_positions` with the last one writable.

        Returns (src, dst) when the block to be written was shared and must be copied first.
        """
        while len(table) < self.blocks_for(num_positions):
            table.extend(self.allocate(1))
        last = (num_positions - 1) // self.block_size
        shared = table[last]
        if self._refs[shared] == 1:
            return None
        (copy,) = self.allocate(1)
        self._refs[shared] -= 1
        table[last] = copy
        return shared, copy
