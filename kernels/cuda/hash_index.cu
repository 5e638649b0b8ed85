// Hash index kernels: open addressing, linear probing, power-of-two table.
//
// Slot hashes: EMPTY = 0, TOMBSTONE = 1, live hashes >= 2; each slot has an
// int32 row, -1 where the slot holds no live key. One thread per key. The
// probe order and the stop rules are those of kernels/numpy_backend.py.

#define EMPTY_SLOT 0ULL
#define TOMBSTONE_SLOT 1ULL

typedef unsigned long long u64;

// Slot of `hash`, or -1: walks at most `mask + 1` slots and stops at the first
// EMPTY one, so a full table of tombstones still terminates.
// Not __restrict__: erase writes tombstones into the table while other threads
// are still walking it.
__device__ __forceinline__ long long find_slot(
    const u64* slot_hashes, u64 mask, u64 hash)
{
    // The table never holds a live hash below 2, and stopping here keeps an
    // erase of 0 or 1 from turning an empty slot into a tombstone.
    if (hash <= TOMBSTONE_SLOT) {
        return -1;
    }
    u64 pos = hash & mask;
    for (u64 step = 0; step <= mask; ++step) {
        u64 seen = slot_hashes[pos];
        if (seen == hash) {
            return (long long)pos;
        }
        if (seen == EMPTY_SLOT) {
            return -1;
        }
        pos = (pos + 1) & mask;
    }
    return -1;
}

extern "C" __global__ void index_probe(
    const u64* __restrict__ slot_hashes,
    const int* __restrict__ slot_rows,
    u64 mask,
    const u64* __restrict__ hashes,
    int n,
    int* __restrict__ out_rows)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    long long slot = find_slot(slot_hashes, mask, hashes[i]);
    out_rows[i] = slot < 0 ? -1 : slot_rows[slot];
}

// Claims the first EMPTY or TOMBSTONE slot on each key's probe path. The
// caller guarantees the hashes are unique and absent, so a TOMBSTONE can be
// reused without looking further for a live copy of the key. Slots only
// change from free to live here, which keeps every probe path unbroken
// while threads race: a lost compare-and-swap means the slot went live.
extern "C" __global__ void index_insert(
    u64* __restrict__ slot_hashes,
    int* __restrict__ slot_rows,
    u64 mask,
    const u64* __restrict__ hashes,
    const int* __restrict__ rows,
    int n,
    int* __restrict__ failed)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    u64 hash = hashes[i];
    u64 pos = hash & mask;
    for (u64 step = 0; step <= mask; ++step) {
        u64 seen = slot_hashes[pos];
        while (seen <= TOMBSTONE_SLOT) {
            u64 prev = atomicCAS(&slot_hashes[pos], seen, hash);
            if (prev == seen) {
                slot_rows[pos] = rows[i];
                return;
            }
            seen = prev;
        }
        pos = (pos + 1) & mask;
    }
    // No free slot on the whole table: the host turns this into an error.
    atomicAdd(failed, 1);
}

// Marks each present key's slot TOMBSTONE and returns its row (-1 if absent).
// Keys in one batch must be unique: a duplicate may see the tombstone its twin
// just wrote and report -1.
extern "C" __global__ void index_erase(
    u64* slot_hashes,
    int* __restrict__ slot_rows,
    u64 mask,
    const u64* __restrict__ hashes,
    int n,
    int* __restrict__ out_rows)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    long long slot = find_slot(slot_hashes, mask, hashes[i]);
    if (slot < 0) {
        out_rows[i] = -1;
        return;
    }
    out_rows[i] = slot_rows[slot];
    slot_rows[slot] = -1;
    slot_hashes[slot] = TOMBSTONE_SLOT;
}
