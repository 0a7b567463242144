/*
 * ecr stage libraries: the C ABI, version 1.
 *
 * A shared library that exports these five functions can be a stage of an
 * ecr recipe (`use = "dylib"`). Everything crosses as NUL-terminated UTF-8
 * JSON. See the module documentation of ecr_engine::dylib for the rules, and
 * plugins/examples/cues for a complete example (in Rust).
 */
#ifndef ECR_STAGE_H
#define ECR_STAGE_H

#include <stdint.h>

#define ECR_ABI_VERSION 1

/* The ABI version the library implements; must return ECR_ABI_VERSION.
 * The host calls it before looking up anything else. */
uint32_t ecr_abi_version(void);

/* Create a stage from the recipe's `config` table (a JSON object).
 * Returns an opaque handle, or NULL after storing a message in *err_out
 * (allocated by the library, freed by the host with ecr_string_free). */
void *ecr_stage_create(const char *config_json, char **err_out);

/* Run the stage on one turn. input_json is an object with the declared
 * `reads` (field name -> value, e.g. {"user.text": "I loved Alien"}).
 * Returns 0 and stores in *out_json an object with the fields it changes
 * (each one of the declared `writes`), or non-zero and stores a message.
 * Called concurrently from several threads with the same handle, unless the
 * recipe sets `exclusive = true`. */
int32_t ecr_stage_run(void *stage, const char *input_json, char **out_json);

/* Optional: ecr_stage_run with the turn's cancellation flag. When exported, the
 * host calls it instead of ecr_stage_run; *cancelled becomes non-zero when the
 * caller cancels the turn, and a long-running stage should then return soon
 * (any non-zero code). */
int32_t ecr_stage_run_cancellable(void *stage, const char *input_json,
                                  const volatile uint8_t *cancelled, char **out_json);

/* Free a handle made by ecr_stage_create (called once). */
void ecr_stage_drop(void *stage);

/* Free a string this library stored in *err_out or *out_json. */
void ecr_string_free(char *s);

#endif /* ECR_STAGE_H */
