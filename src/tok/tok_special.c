/*
 * tok_special.c: special tokens found by their text, as llama.cpp does.
 *
 * GGUF files rarely say which tokens end a turn or mark fill-in-the-middle
 * spans, so llama.cpp (and therefore the reference outputs) recognises them
 * by their spelling, and forces the CONTROL attribute on them. That attribute
 * changes tokenization (a CONTROL text is only matched with parse_special)
 * and decoding (its piece is empty), so we repeat the same fix-ups in the
 * same order:
 *   1. EOT, EOM and FIM ids not given in metadata: first token (by id) whose
 *      text is in the list for that role; it becomes CONTROL;
 *   2. the end-of-generation set: FIM pad/repo/sep, every token whose text is
 *      in the EOG list (made CONTROL), then eos, eot, eom;
 *   3. gpt-oss's channel/message/start/constrain tokens become USER_DEFINED;
 *      with both "<|return|>" and "<|call|>" (or "<|calls|>" and
 *      "<|flush|>"), "<|end|>" leaves the EOG set;
 *   4. the split list: CONTROL, USER_DEFINED and UNKNOWN tokens, longest
 *      text first (ties by id, where llama.cpp's order is unspecified);
 *   5. by model name: Phi-3 special tokens eat the whitespace after them
 *      (RSTRIP) except <unk>, <s>, <|endoftext|>; Jina v2 / modern-bert mask
 *      tokens eat whitespace before them (LSTRIP).
 */
#include "tok_internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static const char *const eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<end_of_utterance>", NULL,
};
static const char *const eom_texts[] = { "<|eom_id|>", NULL };
static const char *const fim_pre_texts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
    "<PRE>", "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL,
};
static const char *const fim_suf_texts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>",
    "<SUF>", "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL,
};
static const char *const fim_mid_texts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
    "<MID>", "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL,
};
static const char *const fim_pad_texts[] = { "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL };
static const char *const fim_rep_texts[] = {
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL,
};
static const char *const fim_sep_texts[] = { "<|file_sep|>", NULL };
static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~[", NULL,
};

static int32_t tok_find_cstr(const struct tok_vocab *v, const char *s)
{
    return tok_find(v, s, strlen(s));
}

/* Step 1: fill *id from the first token (lowest id) whose text is in list. */
static void tok_detect_role(struct tok_vocab *v, int32_t *id, const char *const *list)
{
    if (*id >= 0) return;
    for (; *list; list++) {
        int32_t k = tok_find_cstr(v, *list);
        if (k >= 0 && (*id < 0 || k < *id)) *id = k;
    }
    if (*id >= 0) v->attrs[*id] |= TOK_ATTR_CONTROL;
}

static void tok_mark_eog(struct tok_vocab *v, int32_t id)
{
    if (tok_id_valid(v, id)) v->attrs[id] |= TOK_ATTR_EOG_;
}

/* Steps 2 and 3. */
static void tok_build_eog(struct tok_vocab *v)
{
    tok_mark_eog(v, v->fim_pad);
    tok_mark_eog(v, v->fim_rep);
    tok_mark_eog(v, v->fim_sep);
    for (const char *const *t = eog_texts; *t; t++) {
        int32_t id = tok_find_cstr(v, *t);
        if (id >= 0) v->attrs[id] |= TOK_ATTR_EOG_ | TOK_ATTR_CONTROL;
    }
    static const char *const user_defined[] = { "<|channel|>", "<|message|>", "<|start|>",
                                                "<|constrain|>" };
    for (size_t k = 0; k < TT_ARRAY_LEN(user_defined); k++) {
        int32_t id = tok_find_cstr(v, user_defined[k]);
        if (id >= 0) v->attrs[id] = TOK_ATTR_USER_DEFINED | (v->attrs[id] & TOK_ATTR_EOG_);
    }
    tok_mark_eog(v, v->eos);
    tok_mark_eog(v, v->eot);
    tok_mark_eog(v, v->eom);
    int32_t ret = tok_find_cstr(v, "<|return|>"), call = tok_find_cstr(v, "<|call|>");
    int32_t calls = tok_find_cstr(v, "<|calls|>"), flush = tok_find_cstr(v, "<|flush|>");
    int32_t end = tok_find_cstr(v, "<|end|>");
    bool eog_ret = tok_is_eog(v, ret), eog_call = tok_is_eog(v, call) || tok_is_eog(v, calls);
    if (tok_is_eog(v, end) && eog_call && (eog_ret || tok_is_eog(v, flush)))
        v->attrs[end] = TOK_ATTR_USER_DEFINED;
}

static int tok_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Step 4. Sort keys pack (~length, id) so ascending order is longest first,
 * then lowest id. */
static int tok_build_special_list(struct tok_vocab *v)
{
    const uint32_t kinds = TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN;
    int32_t n = 0;
    for (int32_t i = 0; i < v->n_tokens; i++) n += (v->attrs[i] & kinds) != 0;
    uint64_t *keys = malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
    v->special = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!keys || !v->special) {
        free(keys);
        return tt_error_set(TT_ENOMEM, "tok: out of memory");
    }
    n = 0;
    for (int32_t i = 0; i < v->n_tokens; i++)
        if (v->attrs[i] & kinds)
            keys[n++] = ((uint64_t)(UINT32_MAX - v->texts[i].len) << 32) | (uint32_t)i;
    qsort(keys, (size_t)n, sizeof(uint64_t), tok_cmp_u64);
    for (int32_t i = 0; i < n; i++) v->special[i] = (int32_t)(keys[i] & 0xffffffffu);
    v->n_special = n;
    free(keys);
    return 0;
}

static void tok_set_attr(struct tok_vocab *v, const char *text, uint32_t attr, bool on)
{
    int32_t id = tok_find_cstr(v, text);
    if (id < 0) return;
    if (on) v->attrs[id] |= attr;
    else v->attrs[id] &= ~attr;
}

/* Step 5. */
static void tok_name_fixups(struct tok_vocab *v, const struct gguf_file *f)
{
    const char *name = "", *pre = "", *arch = "";
    gguf_get_str(f, "general.name", &name);
    gguf_get_str(f, "tokenizer.ggml.pre", &pre);
    gguf_get_str(f, "general.architecture", &arch);
    char lname[256];
    size_t n = 0;
    for (; name[n] && n + 1 < sizeof(lname); n++) lname[n] = (char)tolower((unsigned char)name[n]);
    lname[n] = 0;
    if (strstr(pre, "jina-v2-de") || strstr(pre, "jina-v2-es") || strstr(pre, "jina-v2-code") ||
        strstr(arch, "nomic-bert-moe") || strstr(arch, "jina-bert-v3")) {
        tok_set_attr(v, "<mask>", TOK_ATTR_LSTRIP, true);
    } else if (strstr(lname, "phi-3") || strstr(lname, "phi3")) {
        for (int32_t i = 0; i < v->n_special; i++) v->attrs[v->special[i]] |= TOK_ATTR_RSTRIP;
        tok_set_attr(v, "</s>", TOK_ATTR_RSTRIP, true);
        tok_set_attr(v, "<unk>", TOK_ATTR_RSTRIP, false);
        tok_set_attr(v, "<s>", TOK_ATTR_RSTRIP, false);
        tok_set_attr(v, "<|endoftext|>", TOK_ATTR_RSTRIP, false);
    } else if (strstr(lname, "modern-bert")) {
        tok_set_attr(v, "[MASK]", TOK_ATTR_LSTRIP, true);
    }
}

int tok_special_init(struct tok_vocab *v, const struct gguf_file *f)
{
    tok_detect_role(v, &v->eot, eot_texts);
    tok_detect_role(v, &v->eom, eom_texts);
    tok_detect_role(v, &v->fim_pre, fim_pre_texts);
    tok_detect_role(v, &v->fim_suf, fim_suf_texts);
    tok_detect_role(v, &v->fim_mid, fim_mid_texts);
    tok_detect_role(v, &v->fim_pad, fim_pad_texts);
    tok_detect_role(v, &v->fim_rep, fim_rep_texts);
    tok_detect_role(v, &v->fim_sep, fim_sep_texts);
    tok_build_eog(v);
    int rc = tok_build_special_list(v);
    if (rc) return rc;
    tok_name_fixups(v, f);
    return 0;
}
