package cli

import (
	"math/rand/v2"
	"strconv"
)

// Random sandbox names are docker-like: adjective_surname, e.g. "brave_hopper".
var (
	nameAdjectives = []string{"admiring", "agile", "bold", "brave", "calm", "clever", "cool", "dazzling",
		"eager", "elegant", "festive", "focused", "gallant", "gentle", "happy", "jolly", "keen", "kind",
		"lucid", "modest", "nifty", "optimistic", "quirky", "relaxed", "serene", "sharp", "stoic",
		"tender", "upbeat", "vibrant", "wizardly", "zealous"}
	nameSurnames = []string{"agnesi", "babbage", "bell", "cerf", "curie", "dijkstra", "einstein",
		"euler", "fermi", "galois", "hamilton", "hopper", "kahn", "knuth", "lamarr", "lamport",
		"lovelace", "mccarthy", "metcalfe", "noether", "pascal", "perlman", "postel", "ritchie",
		"shannon", "thompson", "torvalds", "turing", "wing", "wozniak"}
)

// randomName returns a random sandbox name; retries (attempt > 0) add a digit, as
// docker does after a collision.
func randomName(attempt int) string {
	name := nameAdjectives[rand.IntN(len(nameAdjectives))] + "_" + nameSurnames[rand.IntN(len(nameSurnames))]
	if attempt > 0 {
		name += strconv.Itoa(rand.IntN(10))
	}
	return name
}
