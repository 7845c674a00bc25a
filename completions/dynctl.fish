# fish completion for dynctl.
# Install: copy to ~/.config/fish/completions/dynctl.fish (or /usr/share/fish/vendor_completions.d/).
# Static on purpose: it never runs dynctl, so TAB is instant and never touches a node.
# Keys, values and tokens are the user's own, so only commands, options and files complete.

set -l dynctl_commands get put delete bench repair backup stats info health top log-level cluster ring dev

complete -c dynctl -f

# Global options: before the command, or after any command or subcommand.
complete -c dynctl -l node -x -d 'Node HOST:PORT (env DYNCTL_NODE)'
complete -c dynctl -l timeout -x -d 'Seconds to wait for each reply'
complete -c dynctl -l json -d 'Machine-readable JSON on stdout'
complete -c dynctl -l token-file -r -F -d 'File holding a token (env DYNCTL_TOKEN_FILE)'
complete -c dynctl -l tls-ca -r -F -d 'CA file to verify the node over TLS (env DYNCTL_TLS_CA)'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -l version -d 'Print the version and exit'
complete -c dynctl -s h -l help -d 'Show help and exit'

complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a get -d 'Write the value of a key to stdout'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a put -d 'Store a value, print the new context token'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a delete -d 'Delete what a context token covers'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a bench -d 'Measure throughput and latency'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a repair -d 'Run an anti-entropy exchange now'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a backup -d "Copy the node's store to a file while it serves"
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a log-level -d 'Change the node\'s log level now'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a stats -d 'Rates, latency percentiles, errors per node'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a info -d "The node's version, addresses, store and backlog"
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a health -d 'Exit 0 when healthy, 7 with the failed checks'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a top -d 'Live view of every member'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a cluster -d 'Change and inspect cluster membership'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a ring -d 'Inspect the ring and where a key lives'
complete -c dynctl -n "not __fish_seen_subcommand_from $dynctl_commands" -a dev -d 'Run a local development cluster'

complete -c dynctl -n "__fish_seen_subcommand_from get" -l context -d 'Print only the context token'
complete -c dynctl -n "__fish_seen_subcommand_from get" -l r -x -d 'Replies to wait for'
complete -c dynctl -n "__fish_seen_subcommand_from get" -l pr -x -d 'Replies that must come from primaries'

complete -c dynctl -n "__fish_seen_subcommand_from put" -s f -l file -r -F -d 'Read the value from a file'
complete -c dynctl -n "__fish_seen_subcommand_from put" -l context -x -d 'Token from get --context'
complete -c dynctl -n "__fish_seen_subcommand_from delete" -l context -x -d 'Token from get --context (required)'
complete -c dynctl -n "__fish_seen_subcommand_from put delete" -l w -x -d 'Stores to wait for'
complete -c dynctl -n "__fish_seen_subcommand_from put delete" -l pw -x -d 'Stores that must be on primaries'
complete -c dynctl -n "__fish_seen_subcommand_from get put delete" -s b -l bucket -x -d 'The key\'s bucket (as over HTTP)'
complete -c dynctl -n "__fish_seen_subcommand_from put" -l content-type -x -d 'Content type stored with the value'
complete -c dynctl -n "__fish_seen_subcommand_from put" -l meta -x -d 'User metadata NAME=VALUE (repeatable)'
complete -c dynctl -n "__fish_seen_subcommand_from repair" -l partition -x -d 'Only this partition'
complete -c dynctl -n "__fish_seen_subcommand_from backup" -F -d 'Backup file'
complete -c dynctl -n "__fish_seen_subcommand_from backup" -l force -d 'Replace FILE if it exists, once the backup is complete'
complete -c dynctl -n "__fish_seen_subcommand_from log-level" -a 'DEBUG INFO WARNING ERROR' -d 'Log level'
complete -c dynctl -n "__fish_seen_subcommand_from stats health" -l all -d 'Ask every member'
complete -c dynctl -n "__fish_seen_subcommand_from health" -l hints-max -x -d 'Fail when a node holds more hints'
complete -c dynctl -n "__fish_seen_subcommand_from health" -l transfers-max -x -d 'Fail when a member has more transfers pending'
complete -c dynctl -n "__fish_seen_subcommand_from health" -l disk-max-percent -x -d 'Fail when a store uses more of its map'

complete -c dynctl -n "__fish_seen_subcommand_from bench" -l workload -x -a 'put get mixed insert a b c d f' -d 'Operations to run'
complete -c dynctl -n "__fish_seen_subcommand_from bench" -s c -l concurrency -x -d 'Requests in flight'
complete -c dynctl -n "__fish_seen_subcommand_from bench" -l value-size -x -d 'Bytes per value'
complete -c dynctl -n "__fish_seen_subcommand_from bench" -l seconds -x -d 'Length of the timed phase'
complete -c dynctl -n "__fish_seen_subcommand_from bench" -l keys -x -d 'Distinct keys'
complete -c dynctl -n "__fish_seen_subcommand_from bench" -l connections -x -d 'Client connections'
complete -c dynctl -n "__fish_seen_subcommand_from bench" -l ops -x -d 'Stop after this many operations'
complete -c dynctl -n "__fish_seen_subcommand_from bench" -l routed -d 'Send each request to a primary, by the ring'

# cluster, ring and dev are groups of subcommands; their arguments are node names, addresses and
# keys only the user knows.
set -l cluster_commands join leave remove status transfers
complete -c dynctl -n "__fish_seen_subcommand_from cluster; and not __fish_seen_subcommand_from $cluster_commands" -a join -d 'Join the cluster of a seed node'
complete -c dynctl -n "__fish_seen_subcommand_from cluster; and not __fish_seen_subcommand_from $cluster_commands" -a leave -d 'Hand off partitions and leave'
complete -c dynctl -n "__fish_seen_subcommand_from cluster; and not __fish_seen_subcommand_from $cluster_commands" -a remove -d 'Drop a dead member at once'
complete -c dynctl -n "__fish_seen_subcommand_from cluster; and not __fish_seen_subcommand_from $cluster_commands" -a status -d 'Show every member'
complete -c dynctl -n "__fish_seen_subcommand_from cluster; and not __fish_seen_subcommand_from $cluster_commands" -a transfers -d 'List the partition transfers in flight'
complete -c dynctl -n "__fish_seen_subcommand_from cluster; and __fish_seen_subcommand_from join leave remove" -l dry-run -d 'Print the plan and change nothing'
complete -c dynctl -n "__fish_seen_subcommand_from cluster; and __fish_seen_subcommand_from leave" -l wait -d 'Show progress; return once the node is safe to stop'
complete -c dynctl -n "__fish_seen_subcommand_from cluster; and __fish_seen_subcommand_from remove" -l force -d 'Remove the member even if it is alive'

set -l ring_commands status key
complete -c dynctl -n "__fish_seen_subcommand_from ring; and not __fish_seen_subcommand_from $ring_commands" -a status -d 'Show Q, N, R, W and partitions per node'
complete -c dynctl -n "__fish_seen_subcommand_from ring; and not __fish_seen_subcommand_from $ring_commands" -a key -d "Show a key's partition and preference list"

set -l dev_commands up status start stop kill pause resume
complete -c dynctl -n "__fish_seen_subcommand_from dev; and not __fish_seen_subcommand_from $dev_commands" -a up -d 'Start a local cluster in the foreground'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and not __fish_seen_subcommand_from $dev_commands" -a status -d 'Show each node: process, answers, liveness, hints'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and not __fish_seen_subcommand_from $dev_commands" -a start -d 'Start a stopped node again'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and not __fish_seen_subcommand_from $dev_commands" -a stop -d 'Stop a node (SIGTERM)'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and not __fish_seen_subcommand_from $dev_commands" -a kill -d 'Kill a node (SIGKILL)'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and not __fish_seen_subcommand_from $dev_commands" -a pause -d 'Pause a node (SIGSTOP)'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and not __fish_seen_subcommand_from $dev_commands" -a resume -d 'Resume a paused node (SIGCONT)'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and __fish_seen_subcommand_from status start stop kill pause resume" -l dir -x -a '(__fish_complete_directories (commandline -ct))' -d 'The dev cluster directory'
# Node names: the dev{i} directories under the default .dev.
complete -c dynctl -n "__fish_seen_subcommand_from dev; and __fish_seen_subcommand_from start stop kill pause resume" -a '(for d in .dev/dev*/; basename $d; end)' -d 'Dev node'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and __fish_seen_subcommand_from up" -l nodes -x -d 'How many nodes'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and __fish_seen_subcommand_from up" -l dir -x -a '(__fish_complete_directories (commandline -ct))' -d 'Data and logs directory'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and __fish_seen_subcommand_from up" -l base-port -x -d 'Port of the first node'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and __fish_seen_subcommand_from up" -l n -x -d 'Replicas per key (new cluster)'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and __fish_seen_subcommand_from up" -l r -x -d 'Default read quorum (new cluster)'
complete -c dynctl -n "__fish_seen_subcommand_from dev; and __fish_seen_subcommand_from up" -l w -x -d 'Default write quorum (new cluster)'
