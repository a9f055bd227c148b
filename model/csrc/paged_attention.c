/* Decode attention read straight from the paged KV cache (CPU, float32). It computes what
 * `model.paged.read_slots` (a gather into a padded batch) followed by scaled-dot-product attention
 * computes, without the gather. Built and loaded by model/paged_kernel.py.
 *
 * Built with -fopenmp: torch has loaded its own libgomp.so.1 by then, so the parallel loop runs
 * on torch's intra-op threads (as many as torch.set_num_threads says), not on a second pool.
 */
#include <math.h>
#include <stdint.h>

/* Below this many (row, head, key) triples a step is too small to be worth waking the threads. */
#define MIN_PARALLEL_WORK 1024

/* One row's head h: o (D) = softmax(q·K / sqrt(D)) V over the row's first n slots. Compiled
 * twice on x86-64, for AVX2 + FMA and for any CPU; the loader picks the one this CPU runs. */
#if defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static void attend(const float *qh, const float *pool, const int64_t *row_slots, int64_t n,
                   int64_t h, int64_t H, int64_t D, float scale, float *o) {
    float scores[n > 0 ? n : 1];
    float max = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        const float *k = pool + (row_slots[t] * 2 * H + h) * D;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < D; d++) dot += qh[d] * k[d];
        scores[t] = dot * scale;
        if (scores[t] > max) max = scores[t];
    }
    float sum = 0.f;
    for (int64_t t = 0; t < n; t++) {
        scores[t] = expf(scores[t] - max);
        sum += scores[t];
    }
    for (int64_t d = 0; d < D; d++) o[d] = 0.f;
    for (int64_t t = 0; t < n; t++) {
        const float *v = pool + (row_slots[t] * 2 * H + H + h) * D;
        const float w = scores[t] / sum;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) o[d] += w * v[d];
    }
}

/* Each of the B rows has one query (a decode step). Row b attends to the first lengths[r] of
 * slots[r], r = kv_rows[b], or r = b when kv_rows is NULL (in cross-attention a request's beams
 * share their source's row).
 *
 * q: row b, head h at q + b * q_row_stride + h * D (rows may be a view of a fused projection);
 * pool: (slots, 2, H, D), [slot][0] a key and [slot][1] its value; slots: (R, T); lengths: (R,);
 * out: (B, H, D).
 */
void paged_attention(const float *q, int64_t q_row_stride, const float *pool,
                     const int64_t *slots, const int64_t *lengths, const int64_t *kv_rows,
                     int64_t B, int64_t T, int64_t H, int64_t D, float scale, float *out) {
#pragma omp parallel for schedule(static) if (B * H * T >= MIN_PARALLEL_WORK)
    for (int64_t bh = 0; bh < B * H; bh++) {
        const int64_t b = bh / H, h = bh % H;
        const int64_t r = kv_rows ? kv_rows[b] : b;
        attend(q + b * q_row_stride + h * D, pool, slots + r * T, lengths[r], h, H, D, scale,
               out + bh * D);
    }
}
