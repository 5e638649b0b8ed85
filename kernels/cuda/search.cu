// Fused top-k inner-product search over float16 rows with an eligibility mask.
//
// Pass 1 (fused_topk_q*): a block takes a group of QB queries and a strided
// share of 64-row tiles. Four lanes share a row, read it in 16-byte chunks,
// and reduce their partial dot products with two shuffles. Scores that beat
// the block's current k-th best go to a per-query candidate buffer in shared
// memory; a crowded buffer is sorted and cut back to k. No score matrix is
// ever written: each block leaves k candidates per query.
// Pass 2 (merge_topk): one block per query runs the same buffer over all the
// blocks' candidates and writes the final sorted top-k.
//
// Order everywhere: higher score first, then lower row, as in the NumPy
// reference, so equal scores never depend on scheduling.
//
// TODO: the block shape (4 lanes a row, 64-row tiles, up to 16 queries a
// block, unroll 2) was chosen on paper and has never been profiled on a GPU;
// until it is, the bandwidth goals in docs/benchmarks.md are unverified.

#define WARP 32
#define BLOCK_THREADS 256
#define LANES_PER_ROW 4
#define TILE_ROWS (BLOCK_THREADS / LANES_PER_ROW)
#define HALVES_PER_CHUNK 8
// Per-query buffer: k kept (k <= 128) plus at most one tile of newcomers.
#define FUSED_CAP 256
#define MERGE_CAP 512
#define NO_ROW 0x7fffffff

__device__ __forceinline__ float neg_inf()
{
    return __int_as_float(0xff800000);
}

__device__ __forceinline__ float half_bits_to_float(unsigned short bits)
{
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
    return value;
}

// True when (sa, ra) ranks before (sb, rb).
__device__ __forceinline__ bool ranks_before(float sa, int ra, float sb, int rb)
{
    return sa > sb || (sa == sb && ra < rb);
}

// Per-query candidate lists in shared memory. `count` entries are live; the
// threshold is the k-th best after the last settle, (-inf, NO_ROW) until
// k candidates were seen, so every real score passes it.
template <int NQ, int CAP>
struct TopK {
    float score[NQ * CAP];
    int row[NQ * CAP];
    int count[NQ];
    float thr_score[NQ];
    int thr_row[NQ];
};

template <int NQ, int CAP>
__device__ void topk_init(TopK<NQ, CAP>& top)
{
    if (threadIdx.x < NQ) {
        top.count[threadIdx.x] = 0;
        top.thr_score[threadIdx.x] = neg_inf();
        top.thr_row[threadIdx.x] = NO_ROW;
    }
    __syncthreads();
}

// Safe from many threads at once; the caller keeps count below CAP.
template <int NQ, int CAP>
__device__ __forceinline__ void topk_offer(
    TopK<NQ, CAP>& top, int q, float score, int row)
{
    if (ranks_before(score, row, top.thr_score[q], top.thr_row[q])) {
        int pos = atomicAdd(&top.count[q], 1);
        top.score[q * CAP + pos] = score;
        top.row[q * CAP + pos] = row;
    }
}

// Block-wide bitonic sort of every list, best first.
template <int NQ, int CAP>
__device__ void topk_sort(TopK<NQ, CAP>& top)
{
    const int half = CAP / 2;
    for (int size = 2; size <= CAP; size <<= 1) {
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < NQ * half; t += blockDim.x) {
                int q = t / half;
                int i = t % half;
                int lo = 2 * stride * (i / stride) + (i % stride);
                int a = q * CAP + lo;
                int b = a + stride;
                bool best_first = (lo & size) == 0;
                bool swap = best_first
                    ? ranks_before(top.score[b], top.row[b], top.score[a], top.row[a])
                    : ranks_before(top.score[a], top.row[a], top.score[b], top.row[b]);
                if (swap) {
                    float s = top.score[a];
                    int r = top.row[a];
                    top.score[a] = top.score[b];
                    top.row[a] = top.row[b];
                    top.score[b] = s;
                    top.row[b] = r;
                }
            }
            __syncthreads();
        }
    }
}

// Sorts every list, keeps its best k and raises the threshold to the k-th.
// Called by the whole block after a barrier.
template <int NQ, int CAP>
__device__ void topk_settle(TopK<NQ, CAP>& top, int k)
{
    for (int t = threadIdx.x; t < NQ * CAP; t += blockDim.x) {
        if (t % CAP >= top.count[t / CAP]) {
            top.score[t] = neg_inf();
            top.row[t] = NO_ROW;
        }
    }
    __syncthreads();
    topk_sort<NQ, CAP>(top);
    if (threadIdx.x < NQ && top.count[threadIdx.x] >= k) {
        int q = threadIdx.x;
        top.count[q] = k;
        top.thr_score[q] = top.score[q * CAP + k - 1];
        top.thr_row[q] = top.row[q * CAP + k - 1];
    }
    __syncthreads();
}

// After a round of offers: settle if any list could overflow in the next one.
// __syncthreads_or gives every thread the same answer, so the barriers inside
// topk_settle are reached by all or none.
template <int NQ, int CAP>
__device__ void topk_settle_if_crowded(TopK<NQ, CAP>& top, int k, int round)
{
    __syncthreads();
    bool crowded = threadIdx.x < NQ && top.count[threadIdx.x] > CAP - round;
    if (__syncthreads_or(crowded)) {
        topk_settle<NQ, CAP>(top, k);
    }
}

// Adds one 16-byte chunk (8 halves) of a row to QB running dot products.
template <int QB>
__device__ __forceinline__ void dot_chunk(
    uint4 raw, const float4* query_chunk, int query_stride, float* acc)
{
    unsigned int words[4] = {raw.x, raw.y, raw.z, raw.w};
    float x[HALVES_PER_CHUNK];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        x[2 * w] = half_bits_to_float((unsigned short)(words[w] & 0xffffu));
        x[2 * w + 1] = half_bits_to_float((unsigned short)(words[w] >> 16));
    }
#pragma unroll
    for (int q = 0; q < QB; ++q) {
        float4 a = query_chunk[q * query_stride];
        float4 b = query_chunk[q * query_stride + 1];
        float sum = acc[q];
        sum = fmaf(x[0], a.x, sum);
        sum = fmaf(x[1], a.y, sum);
        sum = fmaf(x[2], a.z, sum);
        sum = fmaf(x[3], a.w, sum);
        sum = fmaf(x[4], b.x, sum);
        sum = fmaf(x[5], b.y, sum);
        sum = fmaf(x[6], b.z, sum);
        sum = fmaf(x[7], b.w, sum);
        acc[q] = sum;
    }
}

// Copies this block's QB queries (zero past the last) into shared memory.
template <int QB>
__device__ void load_queries(
    float* dst, const float* queries, int n_queries, int dim, int first)
{
    int have = min(QB, n_queries - first) * dim;
    const float* src = queries + (size_t)first * dim;
    for (int i = threadIdx.x; i < QB * dim; i += blockDim.x) {
        dst[i] = i < have ? src[i] : 0.0f;
    }
    __syncthreads();
}

// Dot products of one row with the block's queries; the result is summed
// over the row's four lanes, so each of them holds all QB scores.
template <int QB>
__device__ __forceinline__ void score_row(
    const unsigned short* vectors, const float* sq, int dim, int row, bool ok,
    int sub, float* acc)
{
#pragma unroll
    for (int q = 0; q < QB; ++q) {
        acc[q] = 0.0f;
    }
    if (ok) {
        int chunks = dim / HALVES_PER_CHUNK;
        const uint4* src = reinterpret_cast<const uint4*>(vectors + (size_t)row * dim);
        const float4* q4 = reinterpret_cast<const float4*>(sq);
#pragma unroll 4
        for (int c = sub; c < chunks; c += LANES_PER_ROW) {
            dot_chunk<QB>(__ldg(src + c), q4 + 2 * c, 2 * chunks, acc);
        }
    }
#pragma unroll
    for (int q = 0; q < QB; ++q) {
        acc[q] += __shfl_xor_sync(0xffffffffu, acc[q], 1);
        acc[q] += __shfl_xor_sync(0xffffffffu, acc[q], 2);
    }
}

// Writes a block's (or the final) sorted lists, padding with (-inf, -1).
template <int NQ, int CAP>
__device__ void topk_store(
    const TopK<NQ, CAP>& top, int n_lists, int k, float* out_score, int* out_row,
    long long list_stride)
{
    for (int t = threadIdx.x; t < n_lists * k; t += blockDim.x) {
        int q = t / k;
        int j = t % k;
        bool have = j < top.count[q];
        out_score[q * list_stride + j] = have ? top.score[q * CAP + j] : neg_inf();
        out_row[q * list_stride + j] = have ? top.row[q * CAP + j] : -1;
    }
}

// Grid: x = query group of QB, y = row blocks. dim % 8 == 0, k <= 128.
// Writes part_score/part_row[query][blockIdx.y][0..k).
template <int QB>
__device__ void fused_topk(
    const unsigned short* __restrict__ vectors,
    const unsigned char* __restrict__ eligible,
    int n_rows,
    int dim,
    const float* __restrict__ queries,
    int n_queries,
    int k,
    float* __restrict__ part_score,
    int* __restrict__ part_row)
{
    extern __shared__ float4 shared_queries[];
    __shared__ TopK<QB, FUSED_CAP> top;
    float* sq = reinterpret_cast<float*>(shared_queries);
    int first = blockIdx.x * QB;
    int n_lists = min(QB, n_queries - first);
    load_queries<QB>(sq, queries, n_queries, dim, first);
    topk_init<QB, FUSED_CAP>(top);

    int group = threadIdx.x / LANES_PER_ROW;
    int sub = threadIdx.x % LANES_PER_ROW;
    int n_tiles = (n_rows + TILE_ROWS - 1) / TILE_ROWS;
    for (int tile = blockIdx.y; tile < n_tiles; tile += gridDim.y) {
        int row = tile * TILE_ROWS + group;
        bool ok = row < n_rows && eligible[row] != 0;
        float acc[QB];
        score_row<QB>(vectors, sq, dim, row, ok, sub, acc);
        // Spread the shared-memory inserts over the row's four lanes.
#pragma unroll
        for (int q = 0; q < QB; ++q) {
            if (ok && q % LANES_PER_ROW == sub && q < n_lists) {
                topk_offer<QB, FUSED_CAP>(top, q, acc[q], row);
            }
        }
        topk_settle_if_crowded<QB, FUSED_CAP>(top, k, TILE_ROWS);
    }
    topk_settle<QB, FUSED_CAP>(top, k);

    long long list_stride = (long long)gridDim.y * k;
    size_t offset = ((size_t)first * gridDim.y + blockIdx.y) * k;
    topk_store<QB, FUSED_CAP>(
        top, n_lists, k, part_score + offset, part_row + offset, list_stride);
}

#define FUSED_ENTRY(QB)                                                           \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) fused_topk_q##QB( \
        const unsigned short* __restrict__ vectors,                               \
        const unsigned char* __restrict__ eligible, int n_rows, int dim,          \
        const float* __restrict__ queries, int n_queries, int k,                  \
        float* __restrict__ part_score, int* __restrict__ part_row)               \
    {                                                                             \
        fused_topk<QB>(vectors, eligible, n_rows, dim, queries, n_queries, k,     \
                       part_score, part_row);                                     \
    }

FUSED_ENTRY(1)
FUSED_ENTRY(2)
FUSED_ENTRY(4)
FUSED_ENTRY(8)
FUSED_ENTRY(16)

// Grid: one block of BLOCK_THREADS per query. Candidates of one query are
// contiguous (per_query of them); a row of -1 is padding.
// TODO: one block walks all n_blocks * k candidates of its query; at k = 100
// and ~1,000 pass-1 blocks that is 100k candidates, likely tens of
// microseconds; a two-level merge would cut it when k is large.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) merge_topk(
    const float* __restrict__ part_score,
    const int* __restrict__ part_row,
    int per_query,
    int k,
    float* __restrict__ out_score,
    int* __restrict__ out_row)
{
    __shared__ TopK<1, MERGE_CAP> top;
    topk_init<1, MERGE_CAP>(top);
    size_t base = (size_t)blockIdx.x * per_query;
    for (int start = 0; start < per_query; start += BLOCK_THREADS) {
        int i = start + threadIdx.x;
        if (i < per_query && part_row[base + i] >= 0) {
            topk_offer<1, MERGE_CAP>(top, 0, part_score[base + i], part_row[base + i]);
        }
        topk_settle_if_crowded<1, MERGE_CAP>(top, k, BLOCK_THREADS);
    }
    topk_settle<1, MERGE_CAP>(top, k);
    size_t out = (size_t)blockIdx.x * k;
    topk_store<1, MERGE_CAP>(top, 1, k, out_score + out, out_row + out, k);
}
