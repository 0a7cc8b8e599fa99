// TinyCap on upstream TensorFlow Lite for Microcontrollers: the exported application.
// Same shape as TFLM's examples (hello_world, person_detection): setup() once, loop() forever,
// one alignas(16) arena per interpreter sized from the host TFLM allocation report, an op
// resolver listing only the model's ops (op_resolver.h), the models as generated C arrays
// (model_data.cc). The int8 graphs are the ones the TinyCap firmware runs; this app captions the
// built-in sample clip with TFLM's own kernels, greedy decoding with early stop at <eos>.
// Generated next to: model_data.cc/.h, model_settings.h, op_resolver.h (tinycap/firmware.py).
#include <cstdint>
#include <cstring>

#include "model_data.h"
#include "model_settings.h"
#include "op_resolver.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/micro/system_setup.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace {
alignas(16) uint8_t pooler_arena[kPoolerArenaBytes];
alignas(16) uint8_t decoder_arena[kDecoderArenaBytes];
tflite::MicroInterpreter* pooler = nullptr;
tflite::MicroInterpreter* decoder = nullptr;
// h and the context live outside the arenas: TFLM may reuse an input's memory during Invoke().
int8_t h[kHidden];
int8_t context[kContext];
}  // namespace

void setup() {
  tflite::InitializeTarget();
  static TinyCapOpResolver resolver;
  if (RegisterTinyCapOps(resolver) != kTfLiteOk) {
    MicroPrintf("op registration failed");
    return;
  }
  const tflite::Model* pooler_model = tflite::GetModel(g_pooler_model);
  const tflite::Model* decoder_model = tflite::GetModel(g_decoder_model);
  if (pooler_model->version() != TFLITE_SCHEMA_VERSION || decoder_model->version() != TFLITE_SCHEMA_VERSION) {
    MicroPrintf("model schema version differs from TFLITE_SCHEMA_VERSION %d", TFLITE_SCHEMA_VERSION);
    return;
  }
  static tflite::MicroInterpreter pooler_interpreter(pooler_model, resolver, pooler_arena, kPoolerArenaBytes);
  static tflite::MicroInterpreter decoder_interpreter(decoder_model, resolver, decoder_arena, kDecoderArenaBytes);
  if (pooler_interpreter.AllocateTensors() != kTfLiteOk || decoder_interpreter.AllocateTensors() != kTfLiteOk) {
    MicroPrintf("AllocateTensors() failed: arena too small?");
    return;
  }
  pooler = &pooler_interpreter;
  decoder = &decoder_interpreter;
}

void loop() {
  if (pooler == nullptr) return;
  std::memcpy(pooler->input(kPoolerFrames)->data.int8, g_sample_clip, kNumFrames * kDim);
  if (pooler->Invoke() != kTfLiteOk) {
    MicroPrintf("pooler Invoke() failed");
    return;
  }
  // h0, h and h_new share one quantisation, as do both contexts: the loop copies int8 unchanged.
  std::memcpy(h, pooler->output(kPoolerH0)->data.int8, kHidden);
  std::memcpy(context, pooler->output(kPoolerContext)->data.int8, kContext);
  int32_t token = kBos;
  MicroPrintf("caption:");
  for (int step = 0; step < kMaxSteps; ++step) {
    decoder->input(kDecoderToken)->data.i32[0] = token;
    std::memcpy(decoder->input(kDecoderH)->data.int8, h, kHidden);
    std::memcpy(decoder->input(kDecoderContext)->data.int8, context, kContext);
    if (decoder->Invoke() != kTfLiteOk) {
      MicroPrintf("decoder Invoke() failed");
      return;
    }
    const int8_t* logits = decoder->output(kDecoderLogits)->data.int8;
    int best = 0;  // first maximum on ties, like the firmware
    for (int i = 1; i < kVocabSize; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    if (best == kEos) break;
    MicroPrintf("  %d %s", best, kVocab[best]);
    std::memcpy(h, decoder->output(kDecoderHNew)->data.int8, kHidden);
    token = best;
  }
}

int main(int argc, char* argv[]) {
  (void)argc;
  (void)argv;
  setup();
  while (true) {
    loop();
  }
}
