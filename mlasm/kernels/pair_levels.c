/* The local level of a block of n images x m captions, one pair at a time (mlasm/fused.py loads it),
   and the semantic level from its mean weights (semantic_levels, at the end of this file).

   torch scores a block in about twenty passes over its whole (n, R, m, L) similarity tensor (the
   LeakyReLU, two norms, two softmaxes, the products with the similarities and the Gram matrices,
   the means), each reading and writing memory far larger than the caches. Here each pair's (R, L)
   tile is read once and every one of those steps runs on it while it sits in the L1 cache. The
   formulas are mlasm/model.py's, named as there (spec section 3); masked regions and padded words
   are left out exactly as there, so the scores agree with torch's to float32 rounding.

   For the pair of image i and caption j, with s[r][l] = v_r . u_l and x~ = LeakyReLU(x):
     text-to-image:  alpha[r][l] = softmax over the image's real regions r of
                                   lambda_t2i * s~[r][l] / (|s~[r][.]| + eps)       (the norm over words)
                     R_t2i(l) = (sum_r alpha s) / (|u_l| sqrt(alpha^T G_img alpha))  a cosine, G = Gram
     image-to-text:  beta[r][l]  = softmax over the caption's words l of
                                   lambda_i2t * s~[r][l] / (|s~[.][l]| + eps)       (the norm over regions)
                     R_i2t(r) = (sum_l beta s) / (|v_r| sqrt(beta^T G_cap beta))
     t2i, i2t: each pooled (mean or LogSumExp) over the real words / regions;
     and, for the semantic level, each region's mean weight over the words (wbar_r) and each word's
     mean weight over the regions. Two copies of the tile are kept, [r][l] and [l][r], so that every
     loop's innermost index is contiguous and every reduction runs across vector lanes.
*/
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define EPS 1e-8f

#define LANES 16  /* queries per step: a multiple of every vector width (8 floats in AVX2, 16 in AVX-512) */
typedef float lanes __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float)), may_alias));  /* GCC, Clang */
typedef int32_t bits __attribute__((vector_size(LANES * sizeof(int32_t)), aligned(sizeof(int32_t)), may_alias));
/* rows of (gram w) summed at once in attend: ROWS independent sums keep the vector units busy, where
   one row at a time is a chain of dependent additions that waits on each (a sixth of the loop's time) */
#define ROWS 6

/* exp(x) for x <= 0, to about 1e-7 relative: x = k ln 2 + f with |f| <= ln 2 / 2, exp(f) by its
   Taylor series to f^7 (remainder below 3e-9), times 2^k built in the exponent bits. Written with
   plain arithmetic so that the compiler vectorises the loops that call it (libm's expf does not). */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;                           /* exp(-87) is still a normal float */
    const float round_shift = 12582912.0f;                  /* 1.5 * 2^23: adding it rounds to an integer */
    float k = (x * 1.44269504088896341f + round_shift) - round_shift;
    float f = x - k * 0.693145751953125f - k * 1.428606765330187e-6f;  /* ln 2 in two parts */
    float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120
              + f * (1.0f / 720 + f * (1.0f / 5040)))))));
    union { int32_t i; float f; } scale = { .i = ((int32_t)k + 127) << 23 };
    return p * scale.f;
}

static float sum_lanes(lanes v) {
    float total = 0.0f;
    for (int k = 0; k < LANES; k++) total += v[k];
    return total;
}

/* The sum of row[0 .. count - 1] where on is all ones (count a multiple of LANES), in vector lanes. The
   positions left out hold weights too (a padded query's softmax is uniform, not zero): a bit mask drops
   them exactly, whatever they hold. */
static float masked_sum(const float *row, const int32_t *on, int64_t count) {
    lanes total = {0};
    for (int64_t x = 0; x < count; x += LANES)
        total += (lanes)(*(const bits *)(row + x) & *(const bits *)(on + x));
    return sum_lanes(total);
}

static float pool(const float *values, const uint8_t *valid, int64_t count, int lse, float lambda_lse) {
    float total = 0.0f, largest = -INFINITY;
    int64_t used = 0;
    for (int64_t q = 0; q < count; q++) {
        if (valid && !valid[q]) continue;
        used++;
        if (lse) largest = fmaxf(largest, lambda_lse * values[q]);
        else total += values[q];
    }
    if (!lse) return total / (float)used;
    for (int64_t q = 0; q < count; q++)
        if (!valid || valid[q]) total += expf(lambda_lse * values[q] - largest);
    return (logf(total) + largest) / lambda_lse;
}

/* One direction's attention on one pair: every query attends to the keys. s and rect are the pair's
   similarities and their LeakyReLU as [key][query], rows Q apart; rect_by_query is rect as
   [query][key], rows key_stride apart. Keys where key_valid is 0 (masked regions; NULL: all valid)
   get no weight. Writes weights [key][query] and each query's cosine with its attended context,
   |context|^2 = weights^T gram weights (gram [key][key], rows gram_stride apart). Q is a multiple of
   LANES: the queries past the real ones are zero columns, whose results are left out, so that no loop
   over the queries (each runs along the contiguous index) ends in a scalar remainder. The queries go
   LANES at a time, so that each one's running maximum, total and dot product stay in registers.
   scale: K floats of scratch (each key's factor). */
static void attend(const float *restrict s, const float *restrict rect, const float *restrict rect_by_query,
                   int64_t K, int64_t Q, int64_t key_stride, const uint8_t *key_valid, const float *restrict gram,
                   int64_t gram_stride, const float *restrict query_norms, float lambda, float *restrict weights,
                   float *restrict cosines, float *restrict scale) {
    for (int64_t k = 0; k < K; k++) scale[k] = 0.0f;
    for (int64_t q = 0; q < Q; q++)                                 /* each key's norm across the queries */
        for (int64_t k = 0; k < K; k++) scale[k] += rect_by_query[q * key_stride + k] * rect_by_query[q * key_stride + k];
    for (int64_t k = 0; k < K; k++) {
        float norm = sqrtf(scale[k] > EPS * EPS ? scale[k] : EPS * EPS);
        scale[k] = lambda / (norm + EPS);
    }
    for (int64_t q0 = 0; q0 < Q; q0 += LANES) {                    /* LANES queries at a time, their */
        float largest[LANES], total[LANES], inverse[LANES], dots[LANES];  /* sums held in registers */
        for (int q = 0; q < LANES; q++) { largest[q] = -INFINITY; total[q] = 0.0f; dots[q] = 0.0f; }
        for (int64_t k = 0; k < K; k++) {                           /* softmax over the keys, per query */
            if (key_valid && !key_valid[k]) continue;
            for (int q = 0; q < LANES; q++) {
                float z = rect[k * Q + q0 + q] * scale[k];
                weights[k * Q + q0 + q] = z;
                largest[q] = z > largest[q] ? z : largest[q];
            }
        }
        for (int64_t k = 0; k < K; k++) {
            if (key_valid && !key_valid[k]) {
                for (int q = 0; q < LANES; q++) weights[k * Q + q0 + q] = 0.0f;
                continue;
            }
            for (int q = 0; q < LANES; q++) {
                float e = exp_nonpositive(weights[k * Q + q0 + q] - largest[q]);
                weights[k * Q + q0 + q] = e;
                total[q] += e;
            }
        }
        for (int q = 0; q < LANES; q++) inverse[q] = 1.0f / total[q];
        for (int64_t k = 0; k < K; k++)
            for (int q = 0; q < LANES; q++) {
                float w = weights[k * Q + q0 + q] * inverse[q];
                weights[k * Q + q0 + q] = w;
                dots[q] += w * s[k * Q + q0 + q];                    /* query . context */
            }
        lanes sum = {0};                                            /* |context|^2 = w^T gram w */
        int64_t k = 0;
        for (; k + ROWS <= K; k += ROWS) {                          /* (gram w)[k .. k + ROWS - 1]: ROWS */
            lanes mixed[ROWS] = {{0}};                              /* independent sums, not one chain */
            for (int64_t k2 = 0; k2 < K; k2++) {
                const lanes w = *(const lanes *)(weights + k2 * Q + q0);
                for (int t = 0; t < ROWS; t++) mixed[t] += gram[(k + t) * gram_stride + k2] * w;
            }
            for (int t = 0; t < ROWS; t++) sum += *(const lanes *)(weights + (k + t) * Q + q0) * mixed[t];
        }
        for (; k < K; k++) {
            lanes mixed = {0};
            for (int64_t k2 = 0; k2 < K; k2++)
                mixed += gram[k * gram_stride + k2] * *(const lanes *)(weights + k2 * Q + q0);
            sum += *(const lanes *)(weights + k * Q + q0) * mixed;
        }
        for (int q = 0; q < LANES; q++) {
            float context = sqrtf(sum[q] > 0.0f ? sum[q] : 0.0f), denominator = query_norms[q0 + q] * context;
            cosines[q0 + q] = dots[q] / (denominator > EPS ? denominator : EPS);
        }
    }
}

static int64_t padded(int64_t count) { return (count + LANES - 1) / LANES * LANES; }

/* Pairs first_pair .. last_pair - 1 of the block (pair p = image p / m, caption p % m), on one thread. */
static int pair_range(const float *sim, const uint8_t *region_mask, const float *region_norms,
                      const float *region_gram, const int32_t *lengths, const float *word_norms,
                      const float *word_gram, int64_t R, int64_t m, int64_t L,
                      float lambda_t2i, float lambda_i2t, int lse, float lambda_lse, float slope,
                      int64_t first_pair, int64_t last_pair,
                      float *t2i, float *i2t, float *region_weights, float *word_weights) {
    const int64_t Rp = padded(R), Lp = padded(L), tile = Rp * Lp, side = Rp > Lp ? Rp : Lp;
    float *scratch = calloc(6 * tile + 6 * side, sizeof(float));
    if (!scratch) return -1;
    float *s = scratch, *rect = s + tile, *alpha = rect + tile;            /* [region][word], rows Wp apart */
    float *s_t = alpha + tile, *rect_t = s_t + tile, *beta = rect_t + tile;  /* [word][region], rows Rp apart */
    float *word_norm = beta + tile, *region_norm = word_norm + side, *cosines = region_norm + side;
    float *key_scale = cosines + side;
    int32_t *region_on = (int32_t *)(key_scale + side), *word_on = region_on + side;  /* all ones where real */

    for (int64_t p = first_pair; p < last_pair; p++) {
        const int64_t i = p / m, j = p % m, W = lengths[j], Wp = padded(W);  /* W real words */
        const uint8_t *valid = region_mask + i * R;
        if (p + 1 < last_pair)  /* the next pair's R rows lie far apart in the block: have them fetched meanwhile */
            for (int64_t r = 0, i1 = (p + 1) / m, j1 = (p + 1) % m; r < R; r++) {
                const float *next = sim + ((i1 * R + r) * m + j1) * L;
                __builtin_prefetch(next);
                __builtin_prefetch(next + L - 1);
            }
        for (int64_t r = 0; r < R; r++) {                              /* the tile, both ways, zero-padded */
            const float *row = sim + ((i * R + r) * m + j) * L;
            for (int64_t l = 0; l < W; l++) {
                float v = row[l], rv = v > 0.0f ? v : slope * v;
                s[r * Wp + l] = v; rect[r * Wp + l] = rv;
                s_t[l * Rp + r] = v; rect_t[l * Rp + r] = rv;
            }
            for (int64_t l = W; l < Wp; l++) s[r * Wp + l] = rect[r * Wp + l] = 0.0f;
        }
        for (int64_t x = R * Wp; x < Rp * Wp; x++) s[x] = rect[x] = 0.0f;  /* rows past R: the row length changes */
        for (int64_t l = W; l < Wp; l++)
            for (int64_t r = 0; r < Rp; r++) s_t[l * Rp + r] = rect_t[l * Rp + r] = 0.0f;
        for (int64_t l = 0; l < Wp; l++) word_norm[l] = l < W ? word_norms[j * L + l] : 0.0f;
        for (int64_t r = 0; r < Rp; r++) region_norm[r] = r < R ? region_norms[i * R + r] : 0.0f;
        for (int64_t r = 0; r < Rp; r++) region_on[r] = r < R && valid[r] ? -1 : 0;
        for (int64_t l = 0; l < Wp; l++) word_on[l] = l < W ? -1 : 0;

        /* text-to-image: the words attend to the image's real regions */
        attend(s, rect, rect_t, R, Wp, Rp, valid, region_gram + i * R * R, R, word_norm, lambda_t2i,
               alpha, cosines, key_scale);
        t2i[p] = pool(cosines, NULL, W, lse, lambda_lse);
        if (region_weights)
            for (int64_t r = 0; r < R; r++) region_weights[p * R + r] = masked_sum(alpha + r * Wp, word_on, Wp) / (float)W;
        /* image-to-text: the regions attend to the caption's words */
        attend(s_t, rect_t, rect, W, Rp, Wp, NULL, word_gram + j * L * L, L, region_norm, lambda_i2t,
               beta, cosines, key_scale);
        i2t[p] = pool(cosines, valid, R, lse, lambda_lse);
        if (word_weights) {
            int64_t real = 0;
            for (int64_t r = 0; r < R; r++) real += valid[r] != 0;
            for (int64_t l = 0; l < L; l++)
                word_weights[p * L + l] = l < W ? masked_sum(beta + l * Rp, region_on, Rp) / (float)real : 0.0f;
        }
    }
    free(scratch);
    return 0;
}

/* 1 when built with OpenMP: pair_levels then shares its pairs among `threads` threads itself. */
int uses_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Pairs first_pair .. last_pair - 1 of the block (pair p = image p / m, caption p % m).
   sim (n, R, m, L); region_mask, region_norms (n, R); region_gram (n, R, R); lengths (m,) in 1 .. L;
   word_norms (m, L); word_gram (m, L, L); all C-contiguous. Writes t2i, i2t (n, m) and, unless NULL,
   region_weights (n, m, R) and word_weights (n, m, L) (zero past a caption's length). Returns 0, or
   -1 when its scratch memory could not be had.
   Built with OpenMP, the pairs are cut into `threads` equal ranges run in one parallel region. torch's
   libgomp has the same name (libgomp.so.1), so the loader gives this library torch's own runtime: the
   same threads that just ran the block's product take the ranges, instead of a second pool of threads
   competing with them while they spin-wait (which made two threads no faster than one). */
int pair_levels(const float *sim, const uint8_t *region_mask, const float *region_norms,
                const float *region_gram, const int32_t *lengths, const float *word_norms,
                const float *word_gram, int64_t n, int64_t R, int64_t m, int64_t L,
                float lambda_t2i, float lambda_i2t, int lse, float lambda_lse, float slope,
                int64_t first_pair, int64_t last_pair, int threads,
                float *t2i, float *i2t, float *region_weights, float *word_weights) {
    (void)n;
    int failed = 0;
#ifdef _OPENMP
    #pragma omp parallel num_threads(threads > 0 ? threads : 1) reduction(|:failed)
    {
        const int64_t count = last_pair - first_pair, k = omp_get_thread_num(), t = omp_get_num_threads();
        failed |= pair_range(sim, region_mask, region_norms, region_gram, lengths, word_norms, word_gram, R, m, L,
                             lambda_t2i, lambda_i2t, lse, lambda_lse, slope, first_pair + count * k / t,
                             first_pair + count * (k + 1) / t, t2i, i2t, region_weights, word_weights);
    }
#else
    (void)threads;
    failed = pair_range(sim, region_mask, region_norms, region_gram, lengths, word_norms, word_gram, R, m, L,
                        lambda_t2i, lambda_i2t, lse, lambda_lse, slope, first_pair, last_pair,
                        t2i, i2t, region_weights, word_weights);
#endif
    return failed;
}

/* The semantic level (spec 4) of a block's pairs, from the local level's mean weights. For the pair
   (i, j), with wbar_r its regions' mean attention weights:
     x = sum_r wbar_r X[i][r]        (X: the rows W_x v_r + b_x)          image context, projected
     t = sigmoid(sum_r wbar_r G[i][r])  (G: the gate's rows)              the gate
     a = t * h_i + (1 - t) * x                                            the image side
     score = a . b / (|a| |b|)  with b = text_sides[j][i] = sum_l wbar_l (W_t u_l + b_t)  the text side
   (b is made by the caller, one batched product per caption). torch builds x, t and a as (n, m, d)
   tensors in memory; here the pairs go TILE captions of one image at a time, LANES dimensions at a
   time, and nothing of size d is stored. region_weights (n, m, R); context_rows, gate_rows (n, R, d);
   glob (n, d); text_sides (m, n, d); region_mask (n, R). Writes scores (n, m). */
#define TILE 4  /* captions per tile: their accumulators, TILE x 2 vectors, stay in registers */

static inline lanes load_lanes(const float *from, int64_t width) {  /* zero past width (the last chunk of d) */
    if (width == LANES) return *(const lanes *)from;
    lanes v = {0};
    for (int64_t k = 0; k < width; k++) v[k] = from[k];
    return v;
}

static void semantic_range(const float *region_weights, const float *context_rows, const float *gate_rows,
                           const float *glob, const float *text_sides, const uint8_t *region_mask, int64_t n,
                           int64_t R, int64_t m, int64_t d, int64_t first_tile, int64_t last_tile, float *scores) {
    const int64_t tiles_per_image = (m + TILE - 1) / TILE;
    const float none[1] = {0.0f};                                   /* the weight of a tile's missing captions */
    for (int64_t w = first_tile; w < last_tile; w++) {
        const int64_t i = w / tiles_per_image, j0 = w % tiles_per_image * TILE;
        const int64_t count = m - j0 < TILE ? m - j0 : TILE;
        const uint8_t *valid = region_mask + i * R;
        const float *weights[TILE];
        int64_t step[TILE];
        for (int64_t t = 0; t < TILE; t++) {
            weights[t] = t < count ? region_weights + (i * m + j0 + t) * R : none;
            step[t] = t < count;
        }
        lanes image_sq[TILE] = {{0}}, text_sq[TILE] = {{0}}, dot[TILE] = {{0}};
        for (int64_t d0 = 0; d0 < d; d0 += LANES) {
            const int64_t width = d - d0 < LANES ? d - d0 : LANES;
            lanes x[TILE] = {{0}}, g[TILE] = {{0}};
            for (int64_t r = 0; r < R; r++) {
                if (!valid[r]) continue;                              /* no weight, nor its rows' garbage */
                const lanes xr = load_lanes(context_rows + (i * R + r) * d + d0, width);
                const lanes gr = load_lanes(gate_rows + (i * R + r) * d + d0, width);
                for (int64_t t = 0; t < TILE; t++) {
                    const float weight = weights[t][r * step[t]];
                    x[t] += weight * xr;
                    g[t] += weight * gr;
                }
            }
            const lanes h = load_lanes(glob + i * d + d0, width);
            for (int64_t t = 0; t < count; t++) {
                float side[LANES];                                   /* zero past width: adds nothing below */
                for (int k = 0; k < LANES; k++) {
                    const float logit = g[t][k], e = exp_nonpositive(logit > 0.0f ? -logit : logit);
                    const float inverse = 1.0f / (1.0f + e), gate = logit > 0.0f ? inverse : e * inverse;
                    side[k] = x[t][k] + gate * (h[k] - x[t][k]);
                }
                const lanes a = *(const lanes *)side, b = load_lanes(text_sides + ((j0 + t) * n + i) * d + d0, width);
                image_sq[t] += a * a;
                text_sq[t] += b * b;
                dot[t] += a * b;
            }
        }
        for (int64_t t = 0; t < count; t++)
            scores[i * m + j0 + t] = sum_lanes(dot[t]) / ((sqrtf(sum_lanes(image_sq[t])) + EPS)
                                                          * (sqrtf(sum_lanes(text_sq[t])) + EPS));
    }
}

/* The semantic level of images first_image .. last_image - 1 of a block of n images x m captions against
   every caption (semantic_range), their tiles of TILE captions shared among `threads` threads as
   pair_levels shares its pairs. */
int semantic_levels(const float *region_weights, const float *context_rows, const float *gate_rows,
                    const float *glob, const float *text_sides, const uint8_t *region_mask, int64_t n, int64_t R,
                    int64_t m, int64_t d, int64_t first_image, int64_t last_image, int threads, float *scores) {
    const int64_t per_image = (m + TILE - 1) / TILE, first = first_image * per_image;
    const int64_t count = (last_image - first_image) * per_image;
#ifdef _OPENMP
    #pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        const int64_t k = omp_get_thread_num(), t = omp_get_num_threads();
        semantic_range(region_weights, context_rows, gate_rows, glob, text_sides, region_mask, n, R, m, d,
                       first + count * k / t, first + count * (k + 1) / t, scores);
    }
#else
    (void)threads;
    semantic_range(region_weights, context_rows, gate_rows, glob, text_sides, region_mask, n, R, m, d,
                   first, first + count, scores);
#endif
    return 0;
}
