from trimllm.cli import main

main()
