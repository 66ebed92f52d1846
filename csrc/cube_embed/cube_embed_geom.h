// masked_cube_embed geometry, shared by the CPU kernel, the CUDA launchers and both glues (plain C++).
#pragma once

#include <cstdint>

namespace mgnet_cube {

constexpr int64_t K = 384;  // patch length: 3 channels x 2 frames x 8 x 8 pixels

struct Geom {
  int64_t B, T, H, W;  // frames (B, 3, T, H, W), contiguous
  int64_t h, w;        // cube grid (t = T/2, h = H/8, w = W/8)
  int64_t P, Pv, N;    // P = t*h*w cubes; visible (B, Pv); N = B*Pv output rows
  int64_t D;           // embedding width
};

}  // namespace mgnet_cube
