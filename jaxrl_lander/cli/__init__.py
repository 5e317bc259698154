"""The command line: argparse, the commands, exit codes and the process's hooks."""
