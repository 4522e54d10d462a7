/*
 * main.c: `tutti <command> [options]` dispatch and top-level help.
 */
#include "cli.h"

#include <string.h>

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
    bool cluster; /* runs on every rank; the others run on rank 0 only */
};

static const struct command commands[] = {
    { "run", cmd_run, "generate text from a prompt", true },
    { "logits", cmd_logits, "write float32 logits of every position of a token list", true },
    { "tokenize", cmd_tokenize, "print the token ids of a text", false },
    { "inspect", cmd_inspect, "show a GGUF file's metadata and tensors", false },
    { "gen", cmd_gen, "write a random-weight model of any supported shape and type", false },
    { "bench", cmd_bench, "measure TTFT, prefill and decode speed against the bandwidth limit", true },
    { "chat", cmd_chat, "interactive multi-turn chat in the terminal", true },
    { "serve", cmd_serve, "OpenAI-compatible HTTP API", true },
    { "topo", cmd_topo, "ranks, hosts, cores, memory, and measured link latency/bandwidth", true },
    { "plan", cmd_plan, "how a model would be split over a cluster, and its predicted speed", false },
};

static void usage(FILE *fp)
{
    fprintf(fp, "tutti: many machines, one model.\n\nusage: tutti <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < TT_ARRAY_LEN(commands); i++)
        fprintf(fp, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(fp, "\n`tutti <command> --help` describes each command's options.\n");
}

int main(int argc, char **argv)
{
    tt_base_init();
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < TT_ARRAY_LEN(commands); i++) {
        if (strcmp(argv[1], commands[i].name)) continue;
        cli_comm_start(&argc, &argv);
        int rc = 0;
        if (commands[i].cluster || comm_rank(cli_comm()) == 0) rc = commands[i].fn(argc - 1, argv + 1);
        cli_comm_end();
        return rc;
    }
    fprintf(stderr, "tutti: error: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 1;
}
