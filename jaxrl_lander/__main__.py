import sys

try:
    from jaxrl_lander.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the command line loads; main() catches it from then on
    sys.stderr.write("jaxrl_lander: interrupted\n")
    sys.exit(130)

sys.exit(main())
