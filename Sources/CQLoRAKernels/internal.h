// Declarations shared by the C files of this target only (not part of the API).
#ifndef CQLORAKERNELS_INTERNAL_H
#define CQLORAKERNELS_INTERNAL_H

#include "CQLoRAKernels.h"

const float *qk_table_for(int32_t type);
void qk_sorted_table(const float *table, int count, int *order, float *mid);
int qk_bucketize(float s, const float *mid, int count);

void qk_f16_to_f32_ref(float *restrict y, const uint16_t *restrict x, int64_t n);
void qk_f32_to_f16_ref(uint16_t *restrict y, const float *restrict x, int64_t n);

#endif
