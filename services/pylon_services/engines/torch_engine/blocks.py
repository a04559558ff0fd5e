"""The paged KV cache's bookkeeping: which block of the preallocated pool holds which tokens of
which sequence, with automatic prefix caching (pure Python; ``paged.py`` holds the tensors).

A block holds ``block_size`` consecutive tokens of one sequence. Blocks are reference counted:
the ``n`` completions of one prompt and requests that share a prefix point at the same blocks.
A full block is keyed by the hash of its tokens chained to its predecessor's key (so the key
names the whole prefix, as vLLM's automatic prefix caching does). When its last user lets go,
a keyed block is not wiped: it waits in an LRU of reusable blocks, and a later prompt with the
same prefix picks it up again; a fresh allocation takes a never-keyed free block first, then
evicts the least recently used keyed one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def block_key(parent: int | None, tokens: Sequence[int]) -> int:
    """The prefix-cache key of a full block after ``parent`` (None for the first block)."""
    return hash((parent, tuple(tokens)))


class BlockPool:
    """``num_blocks`` blocks; never more than that are handed out, whatever asks."""

    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self.refs = [0] * num_blocks
        self.key_of: list[int | None] = [None] * num_blocks
        self.by_key: dict[int, int] = {}
        self._free = list(range(num_blocks - 1, -1, -1))  # never keyed (or wiped); popped from the end
        self._reusable: OrderedDict[int, None] = OrderedDict()  # keyed, unused; oldest first

    # --- state ---------------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now (free plus evictable)."""
        return len(self._free) + len(self._reusable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    # --- allocation ----------------------------------------------------------------------------

    def allocate(self, count: int) -> list[int]:
        """``count`` blocks for new tokens; ValueError when fewer are free (callers check first)."""
        if count > self.num_free:
            raise ValueError(f"{count} KV blocks asked, {self.num_free} free")
        out = []
        for _ in range(count):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._reusable.popitem(last=False)  # the least recently used prefix
                self._forget(block)
            self.refs[block] = 1
            out.append(block)
        return out

    def share(self, blocks: Sequence[int]) -> None:
        """One more user of each of ``blocks`` (a forked completion)."""
        for block in blocks:
            self.refs[block] += 1

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one user of each block; the last user's keyed blocks stay reusable (newest last)."""
        for block in reversed(blocks):  # the tail of a sequence is evicted before its head
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if self.key_of[block] is not None:
                    self._reusable[block] = None
                else:
                    self._free.append(block)

    # --- prefix caching ------------------------------------------------------------------------

    def lookup(self, tokens: Sequence[int], limit: int) -> tuple[list[int], list[int]]:
        """The cached blocks holding a prefix of ``tokens`` (at most ``limit`` tokens' worth),
        taken for the caller (``release`` gives them back), with their keys."""
        blocks: list[int] = []
        keys: list[int] = []
        if not self.prefix_caching:
            return blocks, keys
        parent: int | None = None
        bs = self.block_size
        for start in range(0, min(len(tokens), limit) - bs + 1, bs):
            key = block_key(parent, tokens[start:start + bs])
            block = self.by_key.get(key)
            if block is None:
                break
            blocks.append(block)
            keys.append(key)
            parent = key
        for block in blocks:
            if self.refs[block] == 0:
                del self._reusable[block]
            self.refs[block] += 1
        return blocks, keys

    def register(self, block: int, key: int) -> None:
        """Key a block that just became full, so later prompts with this prefix can share it."""
        if not self.prefix_caching or self.key_of[block] is not None:
            return
        if key in self.by_key:  # another block holds the same prefix: keep that one cached
            return
        self.key_of[block] = key
        self.by_key[key] = block

    def reset_prefix_cache(self) -> None:
        """Forget every reusable prefix (blocks in use keep their keys until released)."""
        while self._reusable:
            block, _ = self._reusable.popitem(last=False)
            self._forget(block)
            self._free.append(block)

    def _forget(self, block: int) -> None:
        key = self.key_of[block]
        if key is not None and self.by_key.get(key) == block:
            del self.by_key[key]
        self.key_of[block] = None
