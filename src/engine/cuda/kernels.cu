// The CUDA backend's own kernels, compiled at first use by NVRTC (no headers: only
// built-ins and the CUDA math functions NVRTC provides).
//
// Tensors are NHWC as in the CPU engine, so BatchNorm sees `[rows, c]` with the channel
// fastest. Each kernel computes what its CPU counterpart in `engine/` computes, in the
// same order where the order decides the rounding; sums over rows are taken in fixed
// parts and the parts added in order, so results do not depend on scheduling.
// Index arithmetic is 64-bit: ResNet-50 at batch 256 has activations of 200M floats.

typedef long long i64;

#define GRID_STRIDE(i, len) \
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (len); i += (i64)gridDim.x * blockDim.x)

// The end of `bn_sums` and `bn_backward_sums`: each of the block's 32 channels adds its
// 8 row lanes' two sums in lane order and stores them as its part's.
__device__ __forceinline__ void store_part(double (*a)[32], double (*b)[32], double s, double t, int ch, int c,
                                           int part, double* partials) {
    a[threadIdx.y][threadIdx.x] = s;
    b[threadIdx.y][threadIdx.x] = t;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        double ts = 0.0, tt = 0.0;
        for (int l = 0; l < blockDim.y; l++) {
            ts += a[l][threadIdx.x];
            tt += b[l][threadIdx.x];
        }
        partials[(i64)part * 2 * c + ch] = ts;
        partials[(i64)part * 2 * c + c + ch] = tt;
    }
}

extern "C" {

// g *= (out > 0), copied to `copy` when it is not null (a residual block's two branches).
// A multiply by 0 or 1 as `ops::relu_backward`, so NaN and the sign of zero match.
__global__ void relu_backward(float* g, const float* out, float* copy, i64 len) {
    GRID_STRIDE(i, len) {
        float v = g[i] * (out[i] > 0.0f ? 1.0f : 0.0f);
        g[i] = v;
        if (copy) copy[i] = v;
    }
}

// ---------------------------------------------------------------- bf16
// bf16 values travel as their bits (unsigned short), the upper half of an f32's. Rounding
// to nearest, ties to even, NaN kept quiet: `engine::bf16::round` on the CPU.

__global__ void to_bf16(const float* x, unsigned short* y, i64 len) {
    GRID_STRIDE(i, len) {
        unsigned int bits = __float_as_uint(x[i]);
        if ((bits & 0x7fffffffu) > 0x7f800000u) {
            y[i] = (unsigned short)((bits >> 16) | 0x40u);
        } else {
            y[i] = (unsigned short)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
        }
    }
}

// `y = widen(x)`, or `y += widen(x)` with `accumulate`.
__global__ void from_bf16(const unsigned short* x, float* y, i64 len, int accumulate) {
    GRID_STRIDE(i, len) {
        float v = __uint_as_float(((unsigned int)x[i]) << 16);
        y[i] = accumulate ? y[i] + v : v;
    }
}

// ---------------------------------------------------------------- BatchNorm, training
// The statistics in two steps: `bn_sums` leaves per-part sums of `x - k` and `(x - k)²`
// (k: a row of the batch, as the CPU's `channel_sums` shifts by) in f64, blockDim.y row
// lanes per channel combined in lane order; `bn_stats` adds the parts in order and turns
// them into the saved mean, 1/std, scale and shift, and the running averages.
// Launch: grid (ceil(c / blockDim.x), parts), block (32, 8).

__global__ void bn_sums(const float* x, i64 rows, int c, const float* shift, i64 rows_per_part,
                        double* partials) {
    __shared__ double s_sum[8][32];
    __shared__ double s_sq[8][32];
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    int part = blockIdx.y;
    i64 start = part * rows_per_part;
    i64 end = start + rows_per_part < rows ? start + rows_per_part : rows;
    double s = 0.0, q = 0.0;
    if (ch < c) {
        float k = shift[ch];
        for (i64 r = start + threadIdx.y; r < end; r += blockDim.y) {
            double d = (double)(x[r * c + ch] - k);
            s += d;
            q += d * d;
        }
    }
    store_part(s_sum, s_sq, s, q, ch, c, part, partials);
}

// One thread per channel. `saved` holds mean, invstd, scale and shift, c each.
__global__ void bn_stats(const double* partials, int parts, int c, i64 rows, const float* shift,
                         const float* gamma, const float* beta, float eps, float momentum,
                         float* running_mean, float* running_var, float* saved) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    double s = 0.0, q = 0.0;
    for (int p = 0; p < parts; p++) {
        s += partials[(i64)p * 2 * c + j];
        q += partials[(i64)p * 2 * c + c + j];
    }
    double m = (double)rows;
    double shifted_mean = s / m;
    double var = q / m - shifted_mean * shifted_mean;
    if (var < 0.0) var = 0.0;
    double mu = (double)shift[j] + shifted_mean;
    double is = 1.0 / sqrt(var + (double)eps);
    saved[j] = (float)mu;
    saved[c + j] = (float)is;
    saved[2 * c + j] = (float)((double)gamma[j] * is);
    saved[3 * c + j] = (float)((double)beta[j] - mu * (double)gamma[j] * is);
    double unbiased = m > 1.0 ? var * m / (m - 1.0) : var;
    running_mean[j] = (1.0f - momentum) * running_mean[j] + momentum * (float)mu;
    running_var[j] = (1.0f - momentum) * running_var[j] + momentum * (float)unbiased;
}

// y = [relu](x·scale + shift [+ residual]) with per-channel scale and shift: the training
// forward's normalization and the inference BatchNorm alike. `residual` may be null.
__global__ void bn_apply(const float* x, i64 len, int c, const float* scale, const float* shift,
                         const float* residual, int relu, float* y) {
    GRID_STRIDE(i, len) {
        int ch = (int)(i % c);
        float v = x[i] * scale[ch] + shift[ch];
        if (residual) v += residual[i];
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// Inference BatchNorm as x·scale + shift from the running statistics, as
// `batchnorm::eval_affine`: `affine` receives the c scales, then the c shifts.
__global__ void bn_eval_affine(const float* gamma, const float* beta, float eps, const float* running_mean,
                               const float* running_var, int c, float* affine) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float scale = gamma[j] / sqrtf(running_var[j] + eps);
    affine[j] = scale;
    affine[c + j] = beta[j] - running_mean[j] * scale;
}

// Whether the forward's ReLU passed this value (its input decided again from x, as the
// CPU's backward does), or 1 without a ReLU.
__device__ __forceinline__ float active(float g, float x, float scale, float shift, int relu) {
    return (!relu || x * scale + shift > 0.0f) ? g : 0.0f;
}

// The backward's sums Σ dy and Σ dy·x̂ per part, as `bn_sums`. `saved` as `bn_stats` left it.
__global__ void bn_backward_sums(const float* g, const float* x, i64 rows, int c, const float* saved,
                                 int relu, i64 rows_per_part, double* partials) {
    __shared__ double s_dy[8][32];
    __shared__ double s_dyx[8][32];
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    int part = blockIdx.y;
    i64 start = part * rows_per_part;
    i64 end = start + rows_per_part < rows ? start + rows_per_part : rows;
    double s = 0.0, t = 0.0;
    if (ch < c) {
        float mu = saved[ch], is = saved[c + ch], scale = saved[2 * c + ch], shift = saved[3 * c + ch];
        for (i64 r = start + threadIdx.y; r < end; r += blockDim.y) {
            float xv = x[r * c + ch];
            float dy = active(g[r * c + ch], xv, scale, shift, relu);
            s += (double)dy;
            t += (double)(dy * ((xv - mu) * is));
        }
    }
    store_part(s_dy, s_dyx, s, t, ch, c, part, partials);
}

// One thread per channel: γ's and β's gradients, and `coef` = k, a, b (c each) of
// dx = k·(dy − a − x̂·b).
// `accumulate`: add to dgamma and dbeta (the groups after a batch's first) instead of writing them.
__global__ void bn_backward_coef(const double* partials, int parts, int c, i64 rows, const float* gamma,
                                 const float* saved, float* dgamma, float* dbeta, int accumulate, float* coef) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    double s = 0.0, t = 0.0;
    for (int p = 0; p < parts; p++) {
        s += partials[(i64)p * 2 * c + j];
        t += partials[(i64)p * 2 * c + c + j];
    }
    if (accumulate) {
        dbeta[j] += (float)s;
        dgamma[j] += (float)t;
    } else {
        dbeta[j] = (float)s;
        dgamma[j] = (float)t;
    }
    double m = (double)rows;
    coef[j] = gamma[j] * saved[c + j];
    coef[c + j] = (float)(s / m);
    coef[2 * c + j] = (float)(t / m);
}

// In place: g holds dL/dy on entry and dL/dx on return.
__global__ void bn_backward_input(float* g, const float* x, i64 len, int c, const float* saved,
                                  const float* coef, int relu) {
    GRID_STRIDE(i, len) {
        int ch = (int)(i % c);
        float mu = saved[ch], is = saved[c + ch], scale = saved[2 * c + ch], shift = saved[3 * c + ch];
        float xv = x[i];
        float xhat = (xv - mu) * is;
        g[i] = coef[ch] * (active(g[i], xv, scale, shift, relu) - coef[c + ch] - xhat * coef[2 * c + ch]);
    }
}

// ---------------------------------------------------------------- option-A shortcut
// y[img][oy][ox] = [0]*pad ++ x[img][oy·s][ox·s] ++ [0]*pad.
__global__ void shortcut_a_forward(const float* x, int n, int h, int w, int c_in, int stride, int pad,
                                   float* y) {
    int oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride, co = c_in + 2 * pad;
    i64 len = (i64)n * oh * ow * co;
    GRID_STRIDE(i, len) {
        int ch = (int)(i % co);
        i64 pix = i / co;
        int ox = (int)(pix % ow), oy = (int)(pix / ow % oh);
        i64 img = pix / ((i64)oh * ow);
        int ci = ch - pad;
        y[i] = (ci >= 0 && ci < c_in) ? x[((img * h + (i64)oy * stride) * w + (i64)ox * stride) * c_in + ci] : 0.0f;
    }
}

// dx = shortcutᵀ(g), overwriting dx (zeros where the subsample skipped pixels).
__global__ void shortcut_a_backward(const float* g, int n, int h, int w, int c_in, int stride, int pad,
                                    float* dx) {
    int oh = (h + stride - 1) / stride, ow = (w + stride - 1) / stride, co = c_in + 2 * pad;
    i64 len = (i64)n * h * w * c_in;
    GRID_STRIDE(i, len) {
        int ci = (int)(i % c_in);
        i64 pix = i / c_in;
        int ix = (int)(pix % w), iy = (int)(pix / w % h);
        i64 img = pix / ((i64)h * w);
        float v = 0.0f;
        if (ix % stride == 0 && iy % stride == 0) {
            v = g[((img * oh + iy / stride) * ow + ix / stride) * co + pad + ci];
        }
        dx[i] = v;
    }
}

// ---------------------------------------------------------------- pooling
// Global average pool [n, pixels, c] -> [n, c]: pixels added in order, then scaled, as
// `pool::avgpool_forward`.
__global__ void avgpool_forward(const float* x, int n, int pixels, int c, float* y) {
    GRID_STRIDE(i, (i64)n * c) {
        int ch = (int)(i % c);
        i64 img = i / c;
        const float* xi = x + img * pixels * c + ch;
        float s = 0.0f;
        for (int p = 0; p < pixels; p++) s += xi[(i64)p * c];
        y[i] = s * (1.0f / (float)pixels);
    }
}

__global__ void avgpool_backward(const float* g, int n, int pixels, int c, float* dx) {
    float inv = 1.0f / (float)pixels;
    GRID_STRIDE(i, (i64)n * pixels * c) {
        int ch = (int)(i % c);
        i64 img = i / ((i64)pixels * c);
        dx[i] = g[img * c + ch] * inv;
    }
}

// Max pool with implicit padding that never wins: each output keeps the first maximum
// (a NaN wins, the last one if several) and the index of its input within the image, as
// `pool::maxpool_forward`.
__global__ void maxpool_forward(const float* x, int n, int h, int w, int c, int kernel, int stride, int pad,
                                int oh, int ow, float* y, unsigned* argmax) {
    GRID_STRIDE(i, (i64)n * oh * ow * c) {
        int ch = (int)(i % c);
        i64 pix = i / c;
        int ox = (int)(pix % ow), oy = (int)(pix / ow % oh);
        i64 img = pix / ((i64)oh * ow);
        const float* xi = x + img * h * w * c;
        int y0 = oy * stride - pad, x0 = ox * stride - pad;
        float best = -__int_as_float(0x7f800000);
        unsigned arg = 0xffffffffu;
        for (int ky = 0; ky < kernel; ky++) {
            int iy = y0 + ky;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < kernel; kx++) {
                int ix = x0 + kx;
                if (ix < 0 || ix >= w) continue;
                unsigned idx = (unsigned)(((i64)iy * w + ix) * c + ch);
                float v = xi[idx];
                if (arg == 0xffffffffu || v > best || v != v) {
                    best = v;
                    arg = idx;
                }
            }
        }
        y[i] = best;
        argmax[i] = arg;
    }
}

// dx[j] = Σ g over the outputs whose argmax is j, gathered (no atomics, so the sum's
// order is fixed: output rows, then columns, ascending).
__global__ void maxpool_backward(const float* g, const unsigned* argmax, int n, int h, int w, int c, int kernel,
                                 int stride, int pad, int oh, int ow, float* dx) {
    GRID_STRIDE(i, (i64)n * h * w * c) {
        int ch = (int)(i % c);
        i64 pix = i / c;
        int ix = (int)(pix % w), iy = (int)(pix / w % h);
        i64 img = pix / ((i64)h * w);
        unsigned self = (unsigned)(((i64)iy * w + ix) * c + ch);
        // Outputs whose window [o·stride − pad, o·stride − pad + kernel) holds iy (and ix).
        int vy = iy + pad - kernel, vx = ix + pad - kernel;
        int oy_lo = vy < 0 ? 0 : vy / stride + 1, oy_hi = (iy + pad) / stride;
        int ox_lo = vx < 0 ? 0 : vx / stride + 1, ox_hi = (ix + pad) / stride;
        float s = 0.0f;
        for (int oy = oy_lo; oy <= oy_hi && oy < oh; oy++) {
            for (int ox = ox_lo; ox <= ox_hi && ox < ow; ox++) {
                i64 o = ((img * oh + oy) * ow + ox) * c + ch;
                if (argmax[o] == self) s += g[o];
            }
        }
        dx[i] = s;
    }
}

// ---------------------------------------------------------------- the classifier's bias
// y[r][j] = b[j] for n rows of o: the start the classifier's GEMM adds x·wᵀ to.
__global__ void bias_rows(float* y, const float* b, int n, int o) {
    GRID_STRIDE(i, (i64)n * o) { y[i] = b[i % o]; }
}

// db[j] (+)= Σ_r g[r][j], rows in order as `ops::linear_backward` adds them; one thread per
// column. With `accumulate` the sum is made apart and then added, as on the CPU.
__global__ void bias_grad(const float* g, int n, int o, float* db, int accumulate) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= o) return;
    float s = 0.0f;
    for (int r = 0; r < n; r++) s += g[(i64)r * o + j];
    db[j] = accumulate ? db[j] + s : s;
}

// ---------------------------------------------------------------- loss and optimizer
// Softmax cross-entropy of `n` rows of a batch of `batch`, one thread per row, in f64 as
// `ops::softmax_cross_entropy_of`: the gradient of the batch's mean loss in `grad`, each
// row's loss in `loss` and whether its top-1 prediction is right in `correct`.
__global__ void softmax_xent(const float* logits, const unsigned* labels, int n, int batch, int classes,
                             float* grad, double* loss, unsigned* correct) {
    GRID_STRIDE(r, (i64)n) {
        if (labels[r] >= (unsigned)classes) {
            correct[r] = 0xffffffffu;  // the host reports it
            continue;
        }
        const float* z = logits + r * classes;
        float* gr = grad + r * classes;
        int arg = 0;
        float max = -__int_as_float(0x7f800000);
        for (int j = 0; j < classes; j++) {
            if (z[j] > max) {
                max = z[j];
                arg = j;
            }
        }
        double sum = 0.0;
        for (int j = 0; j < classes; j++) {
            double e = exp((double)(z[j] - max));
            gr[j] = (float)e;
            sum += e;
        }
        int label = (int)labels[r];
        loss[r] = log(sum) - (double)(z[label] - max);
        for (int j = 0; j < classes; j++) gr[j] = (float)((double)gr[j] / sum / (double)batch);
        gr[label] -= 1.0f / (float)batch;
        correct[r] = arg == label ? 1u : 0u;
    }
}

// SGD with momentum and weight decay, PyTorch's formulation as `sgd::step`:
// d = g + wd·p; buf = μ·buf + d; p -= lr·buf.
__global__ void sgd_step(float* p, const float* g, float* buf, i64 len, float lr, float momentum,
                         float weight_decay) {
    GRID_STRIDE(i, len) {
        float d = g[i] + weight_decay * p[i];
        float b = momentum * buf[i] + d;
        buf[i] = b;
        p[i] -= lr * b;
    }
}

// `sgd_step` on many tensors in one launch. `table` holds 4 values per chunk: the
// addresses of the chunk's parameters, gradients and momentum, and its length. A block
// per chunk (looping when there are fewer blocks).
__global__ void sgd_many(const unsigned long long* table, int chunks, float lr, float momentum,
                         float weight_decay) {
    for (int k = blockIdx.x; k < chunks; k += gridDim.x) {
        float* p = (float*)table[4 * k];
        const float* g = (const float*)table[4 * k + 1];
        float* buf = (float*)table[4 * k + 2];
        i64 len = (i64)table[4 * k + 3];
        for (i64 i = threadIdx.x; i < len; i += blockDim.x) {
            float d = g[i] + weight_decay * p[i];
            float b = momentum * buf[i] + d;
            buf[i] = b;
            p[i] -= lr * b;
        }
    }
}

}  // extern "C"
