/*
 * tok_chat.c: chat templates, as built-in renderers (no Jinja engine).
 *
 * A GGUF carries its Jinja chat template in tokenizer.chat_template; we
 * recognise the family by marker strings (llama.cpp's heuristics and order)
 * and render it with C code that reproduces the family's published template
 * for plain system/user/assistant messages. The output never contains the
 * BOS token: the engine tokenizes it with add_special (which adds BOS where
 * the vocab wants it) and parse_special. Formats, for system S, user U1,
 * assistant A1, user U2 and the generation prompt G ("" where none):
 *
 *   llama3     <|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|> (same
 *              for each message, content trimmed); G = <|start_header_id|>
 *              assistant<|end_header_id|>\n\n
 *   chatml     <|im_start|>system\nS<|im_end|>\n ... ; G = <|im_start|>assistant\n
 *   qwen2.5    chatml, plus Qwen2.5's default system message when none given
 *   phi3       <|system|>\nS<|end|>\n<|user|>\nU1<|end|>\n ... ; G = <|assistant|>\n
 *   phi4       <|im_start|>user<|im_sep|>U1<|im_end|> ... ; G = <|im_start|>assistant<|im_sep|>
 *   llama2     [INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]
 *              (Meta's Llama 2 chat; contents stripped; G = "")
 *   mistral    [INST] S\n\nU1 [/INST]A1</s>[INST] U2 [/INST] (Mistral/Mixtral
 *              v0.1, which has no system role: it goes before the first user turn)
 *   mistral-v3 [INST] U1[/INST] A1</s>[INST] S\n\nU2[/INST] (v0.3: the system
 *              message goes with the last user turn, if the chat ends with one)
 *   mistral-v7 [SYSTEM_PROMPT] S[/SYSTEM_PROMPT][INST] U1[/INST] A1</s>[INST] U2[/INST]
 *   gemma      <start_of_turn>user\nS\n\nU1<end_of_turn>\n<start_of_turn>model\n
 *              A1<end_of_turn>\n ... ; G = <start_of_turn>model\n (Gemma 3:
 *              system before the first user turn; contents trimmed)
 *   deepseek   S### Instruction:\nU1\n### Response:\nA1\n<|EOT|>\n ... ;
 *              G = ### Response:\n (DeepSeek Coder, without its default system text)
 *   deepseek2  S\n\nUser: U1\n\nAssistant: A1<｜end▁of▁sentence｜>User: U2\n\n ;
 *              G = Assistant:
 *   deepseek3  S<｜User｜>U1<｜Assistant｜>A1<｜end▁of▁sentence｜><｜User｜>U2 ;
 *              G = <｜Assistant｜> (several system messages are joined by \n\n)
 */
#include "tok_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define QWEN25_SYSTEM "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

/* Output that counts what it would write, and writes what fits. */
struct chat_out {
    char *p;
    size_t cap, n;
};

static void put_n(struct chat_out *o, const char *s, size_t len)
{
    if (o->p && o->n + len < o->cap) memcpy(o->p + o->n, s, len);
    o->n += len;
}

static void put(struct chat_out *o, const char *s) { put_n(o, s, strlen(s)); }

static bool chat_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* s without leading (if lead) and trailing ASCII whitespace. */
static void put_strip(struct chat_out *o, const char *s, bool lead)
{
    size_t a = 0, b = strlen(s);
    while (lead && a < b && chat_space(s[a])) a++;
    while (b > a && chat_space(s[b - 1])) b--;
    put_n(o, s + a, b - a);
}

static void put_trim(struct chat_out *o, const char *s) { put_strip(o, s, true); }
static void put_rtrim(struct chat_out *o, const char *s) { put_strip(o, s, false); }

static bool is_role(const struct tok_chat_msg *m, const char *role)
{
    return strcmp(m->role, role) == 0;
}

typedef void (*chat_render_fn)(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen);

static void render_llama3(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    for (int i = 0; i < n; i++) {
        put(o, "<|start_header_id|>");
        put(o, m[i].role);
        put(o, "<|end_header_id|>\n\n");
        put_trim(o, m[i].content);
        put(o, "<|eot_id|>");
    }
    if (gen) put(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void render_chatml(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    for (int i = 0; i < n; i++) {
        put(o, "<|im_start|>");
        put(o, m[i].role);
        put(o, "\n");
        put(o, m[i].content);
        put(o, "<|im_end|>\n");
    }
    if (gen) put(o, "<|im_start|>assistant\n");
}

static void render_qwen25(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    if (n == 0 || !is_role(&m[0], "system"))
        put(o, "<|im_start|>system\n" QWEN25_SYSTEM "<|im_end|>\n");
    render_chatml(o, m, n, gen);
}

static void render_phi3(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    for (int i = 0; i < n; i++) {
        put(o, "<|");
        put(o, m[i].role);
        put(o, "|>\n");
        put(o, m[i].content);
        put(o, "<|end|>\n");
    }
    if (gen) put(o, "<|assistant|>\n");
}

static void render_phi4(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    for (int i = 0; i < n; i++) {
        put(o, "<|im_start|>");
        put(o, m[i].role);
        put(o, "<|im_sep|>");
        put(o, m[i].content);
        put(o, "<|im_end|>");
    }
    if (gen) put(o, "<|im_start|>assistant<|im_sep|>");
}

/* Meta's template strips the whole turn text, system block included. */
static void render_llama2(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    const char *sys = n > 0 && is_role(&m[0], "system") ? m[0].content : NULL;
    bool first = true;
    for (int i = sys ? 1 : 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            put(o, first ? "[INST] " : "<s>[INST] ");
            if (first && sys) { /* the strip only touches the ends of the block */
                put(o, "<<SYS>>\n");
                put(o, sys);
                put(o, "\n<</SYS>>\n\n");
                put_rtrim(o, m[i].content);
            } else {
                put_trim(o, m[i].content);
            }
            put(o, " [/INST]");
            first = false;
        } else if (!is_role(&m[i], "system")) {
            put(o, " ");
            put_trim(o, m[i].content);
            put(o, " </s>");
        }
    }
    (void)gen; /* "[/INST]" already invites the answer */
}

static void render_mistral(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    const char *sys = NULL;
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            sys = m[i].content;
        } else if (is_role(&m[i], "user")) {
            put(o, "[INST] ");
            if (sys) {
                put(o, sys);
                put(o, "\n\n");
                sys = NULL;
            }
            put(o, m[i].content);
            put(o, " [/INST]");
        } else {
            put(o, m[i].content);
            put(o, "</s>");
        }
    }
    (void)gen;
}

static void render_mistral_v3(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    const char *sys = NULL;
    for (int i = 0; i < n; i++)
        if (is_role(&m[i], "system")) sys = m[i].content;
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) continue;
        if (is_role(&m[i], "user")) {
            put(o, "[INST] ");
            if (sys && i == n - 1) {
                put(o, sys);
                put(o, "\n\n");
            }
            put(o, m[i].content);
            put(o, "[/INST]");
        } else {
            put(o, " ");
            put_trim(o, m[i].content);
            put(o, "</s>");
        }
    }
    (void)gen;
}

static void render_mistral_v7(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            put(o, "[SYSTEM_PROMPT] ");
            put(o, m[i].content);
            put(o, "[/SYSTEM_PROMPT]");
        } else if (is_role(&m[i], "user")) {
            put(o, "[INST] ");
            put(o, m[i].content);
            put(o, "[/INST]");
        } else {
            put(o, " ");
            put(o, m[i].content);
            put(o, "</s>");
        }
    }
    (void)gen;
}

static void render_gemma(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    const char *sys = NULL;
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            sys = m[i].content;
            continue;
        }
        bool model = is_role(&m[i], "assistant");
        put(o, "<start_of_turn>");
        put(o, model ? "model" : m[i].role);
        put(o, "\n");
        if (sys && !model) {
            put(o, sys);
            put(o, "\n\n");
            sys = NULL;
        }
        put_trim(o, m[i].content);
        put(o, "<end_of_turn>\n");
    }
    if (gen) put(o, "<start_of_turn>model\n");
}

static void render_deepseek(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            put(o, m[i].content);
        } else if (is_role(&m[i], "user")) {
            put(o, "### Instruction:\n");
            put(o, m[i].content);
            put(o, "\n");
        } else if (is_role(&m[i], "assistant")) {
            put(o, "### Response:\n");
            put(o, m[i].content);
            put(o, "\n<|EOT|>\n");
        }
    }
    if (gen) put(o, "### Response:\n");
}

static void render_deepseek2(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "system")) {
            put(o, m[i].content);
            put(o, "\n\n");
        } else if (is_role(&m[i], "user")) {
            put(o, "User: ");
            put(o, m[i].content);
            put(o, "\n\n");
        } else if (is_role(&m[i], "assistant")) {
            put(o, "Assistant: ");
            put(o, m[i].content);
            put(o, DS_EOS);
        }
    }
    if (gen) put(o, "Assistant:");
}

static void render_deepseek3(struct chat_out *o, const struct tok_chat_msg *m, int n, bool gen)
{
    bool first_sys = true; /* system messages first, joined, as the template gathers them */
    for (int i = 0; i < n; i++) {
        if (!is_role(&m[i], "system")) continue;
        if (!first_sys) put(o, "\n\n");
        put(o, m[i].content);
        first_sys = false;
    }
    for (int i = 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            put(o, DS_USER);
            put(o, m[i].content);
        } else if (is_role(&m[i], "assistant")) {
            put(o, DS_ASSISTANT);
            put(o, m[i].content);
            put(o, DS_EOS);
        }
    }
    if (gen) put(o, DS_ASSISTANT);
}

/* ---- the table ---- */

struct chat_template {
    const char *name;
    chat_render_fn render;
};

static const struct chat_template chat_templates[] = {
    { "llama3", render_llama3 },         { "chatml", render_chatml },
    { "qwen2.5", render_qwen25 },        { "phi3", render_phi3 },
    { "phi4", render_phi4 },             { "llama2", render_llama2 },
    { "mistral", render_mistral },       { "mistral-v3", render_mistral_v3 },
    { "mistral-v7", render_mistral_v7 }, { "gemma", render_gemma },
    { "deepseek", render_deepseek },     { "deepseek2", render_deepseek2 },
    { "deepseek3", render_deepseek3 },
};

static const struct chat_template *chat_find(const char *name)
{
    for (size_t i = 0; i < TT_ARRAY_LEN(chat_templates); i++)
        if (strcmp(chat_templates[i].name, name) == 0) return &chat_templates[i];
    return NULL;
}

static char chat_names_buf[512];

static void chat_names_fill(void)
{
    size_t n = 0;
    for (size_t i = 0; i < TT_ARRAY_LEN(chat_templates); i++) {
        int w = snprintf(chat_names_buf + n, sizeof(chat_names_buf) - n, "%s%s", i ? ", " : "",
                         chat_templates[i].name);
        if (w < 0 || (size_t)w >= sizeof(chat_names_buf) - n) break;
        n += (size_t)w;
    }
}

const char *tok_chat_template_names(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, chat_names_fill);
    return chat_names_buf;
}

/* ---- detection ---- */

int tok_chat_template_detect_text(const char *t, const char **name)
{
    TT_ASSERT(t && name);
    const struct chat_template *exact = chat_find(t);
#define HAS(s) (strstr(t, (s)) != NULL)
    const char *r = exact ? exact->name
        : HAS("<|im_start|>")
            ? (HAS("<|im_sep|>") ? "phi4" : HAS(QWEN25_SYSTEM) ? "qwen2.5" : "chatml")
        : (strncmp(t, "mistral", 7) == 0 || HAS("[INST]"))
            ? (HAS("[SYSTEM_PROMPT]") ? "mistral-v7" : HAS("<<SYS>>") ? "llama2"
               : HAS("[AVAILABLE_TOOLS]") ? "mistral-v3" : "mistral")
        : (HAS("<|assistant|>") && HAS("<|end|>")) ? "phi3"
        : HAS("<start_of_turn>") ? "gemma"
        : (HAS("### Instruction:") && HAS("<|EOT|>")) ? "deepseek"
        : (HAS("<|start_header_id|>") && HAS("<|end_header_id|>")) ? "llama3"
        : HAS("'Assistant: ' + message['content'] + eos_token") ? "deepseek2"
        : (HAS(DS_ASSISTANT) && HAS(DS_USER) && HAS(DS_EOS)) ? "deepseek3"
        : NULL;
#undef HAS
    if (!r)
        return tt_error_set(TT_EUNSUPPORTED, "tok: unrecognised chat template (known families: "
                            "%s); pass a template name explicitly", tok_chat_template_names());
    *name = r;
    return 0;
}

int tok_chat_template_detect(const struct gguf_file *f, const char **name)
{
    const char *t = NULL;
    int rc = gguf_get_str(f, "tokenizer.chat_template", &t);
    if (rc == TT_ENOTFOUND)
        return tt_error_set(rc, "tok: the model file has no tokenizer.chat_template");
    if (rc) return rc;
    return tok_chat_template_detect_text(t, name);
}

/* ---- rendering ---- */

static int chat_check(const char *name, const struct tok_chat_msg *msgs, int n,
                      const struct chat_template **tmpl)
{
    *tmpl = name ? chat_find(name) : NULL;
    if (!*tmpl)
        return tt_error_set(TT_EINVAL, "tok: unknown chat template '%s' (known: %s)",
                            name ? name : "(null)", tok_chat_template_names());
    if (n < 0 || n > TOK_CHAT_MSGS_MAX || (n > 0 && !msgs))
        return tt_error_set(TT_EINVAL, "tok: bad message list (%d messages)", n);
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return tt_error_set(TT_EINVAL, "tok: message %d has no %s", i,
                                msgs[i].role ? "content" : "role");
    return 0;
}

int tok_chat_render(const char *template_name, const struct tok_chat_msg *msgs, int n,
                    bool add_generation_prompt, char *out, size_t cap)
{
    const struct chat_template *tmpl;
    int rc = chat_check(template_name, msgs, n, &tmpl);
    if (rc) return rc;
    struct chat_out o = { out, cap, 0 };
    tmpl->render(&o, msgs, n, add_generation_prompt);
    if (o.n > INT32_MAX - 1) return tt_error_set(TT_ERANGE, "tok: rendered chat is too long");
    if (!out && cap == 0) return (int)o.n;
    if (!out || o.n + 1 > cap)
        return tt_error_set(TT_ERANGE, "tok: rendered chat needs %zu bytes, have %zu", o.n + 1, cap);
    out[o.n] = 0;
    return (int)o.n;
}

int tok_chat_render_alloc(const char *template_name, const struct tok_chat_msg *msgs, int n,
                          bool add_generation_prompt, char **out)
{
    TT_ASSERT(out);
    *out = NULL;
    int len = tok_chat_render(template_name, msgs, n, add_generation_prompt, NULL, 0);
    if (len < 0) return len;
    char *p = malloc((size_t)len + 1);
    if (!p) return tt_error_set(TT_ENOMEM, "tok: out of memory for a %d-byte chat", len);
    int rc = tok_chat_render(template_name, msgs, n, add_generation_prompt, p, (size_t)len + 1);
    if (rc < 0) {
        free(p);
        return rc;
    }
    *out = p;
    return rc;
}
