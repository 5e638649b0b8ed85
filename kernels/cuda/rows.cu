// Row kernels over float16 storage: gather (to float32) and scatter (from it).
//
// float16 is handled as raw 16-bit words converted with PTX `cvt`, so the
// source needs no header: NVRTC, nvcc and the compile test see one file.

#define WARP 32
#define ROWS_PER_BLOCK 8  // one warp per row, 256 threads

__device__ __forceinline__ float half_bits_to_float(unsigned short bits)
{
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
    return value;
}

// Round to nearest even, as NumPy's astype(float16) does.
__device__ __forceinline__ unsigned short float_to_half_bits(float value)
{
    unsigned short bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    return bits;
}

__device__ __forceinline__ float warp_sum(float value)
{
    for (int offset = WARP / 2; offset > 0; offset >>= 1) {
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    }
    return value;
}

// Sum of squares of one stored row, seen by every lane of the warp.
__device__ float row_sum_squares(const unsigned short* src, int dim, int lane)
{
    float sum = 0.0f;
    for (int j = lane; j < dim; j += WARP) {
        float x = half_bits_to_float(src[j]);
        sum = fmaf(x, x, sum);
    }
    return warp_sum(sum);
}

// Copies one row, dividing by `norm` (1 leaves it as stored). Even widths move
// two halves per lane so a warp reads 128 contiguous bytes per step.
__device__ void copy_row(
    const unsigned short* src, float* dst, int dim, float norm, int lane)
{
    if ((dim & 1) == 0) {
        const unsigned int* pairs = reinterpret_cast<const unsigned int*>(src);
        float2* out = reinterpret_cast<float2*>(dst);
        for (int j = lane; j < dim / 2; j += WARP) {
            unsigned int word = pairs[j];
            float2 v;
            v.x = half_bits_to_float((unsigned short)(word & 0xffffu)) / norm;
            v.y = half_bits_to_float((unsigned short)(word >> 16)) / norm;
            out[j] = v;
        }
        return;
    }
    for (int j = lane; j < dim; j += WARP) {
        dst[j] = half_bits_to_float(src[j]) / norm;
    }
}

// out[i] = vectors[rows[i]] as float32, L2-normalised when `normalize` is set;
// a zero row stays zero. Rows must be in range: the host checks them.
extern "C" __global__ void __launch_bounds__(WARP * ROWS_PER_BLOCK) gather_rows(
    const unsigned short* __restrict__ vectors,
    int dim,
    const int* __restrict__ rows,
    int n,
    int normalize,
    float* __restrict__ out)
{
    int i = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (i >= n) {
        return;  // a whole warp leaves together, so the shuffles stay full
    }
    const unsigned short* src = vectors + (size_t)rows[i] * dim;
    float norm = 1.0f;
    if (normalize) {
        float sum = row_sum_squares(src, dim, lane);
        // Divide by the norm rather than multiply by its reciprocal: closer
        // to what NumPy computes.
        norm = sum > 0.0f ? sqrtf(sum) : 1.0f;
    }
    copy_row(src, out + (size_t)i * dim, dim, norm, lane);
}

// vectors[rows[i]] = values[i] rounded to float16. One thread per element so
// consecutive threads write consecutive halves. Rows must be unique and in
// range: with duplicates the surviving write is unspecified.
extern "C" __global__ void scatter_rows(
    unsigned short* __restrict__ vectors,
    int dim,
    const int* __restrict__ rows,
    const float* __restrict__ values,
    long long total)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += stride) {
        long long i = e / dim;
        long long j = e - i * dim;
        vectors[(size_t)rows[i] * dim + j] = float_to_half_bits(values[e]);
    }
}
